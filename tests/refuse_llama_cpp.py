"""Python source that makes a fresh interpreter refuse `llama_cpp` as a missing or broken build does (an import
hook raising ImportError), for tests of the fallback to transformers: run it first in a child process (`-c`), or
write it as that process's `sitecustomize.py`. Nothing of the test process itself is patched."""

HOOK = '''
import importlib.abc, sys

class RefuseLlamaCpp(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "llama_cpp" or name.startswith("llama_cpp."):
            raise ImportError("libllama.so: cannot open shared object file (simulated)")
        return None

sys.meta_path.insert(0, RefuseLlamaCpp())
'''
