"""The database: SQLAlchemy base and engine, migrations, and the tables no one area owns."""
