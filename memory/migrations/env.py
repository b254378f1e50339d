"""Alembic environment: runs migrations on the engine handed over in `config.attributes["engine"]`."""

from alembic import context

from memory.schema import Base, is_schema_object

config = context.config
engine = config.attributes["engine"]

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        include_name=is_schema_object,
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
