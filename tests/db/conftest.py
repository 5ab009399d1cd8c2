import pytest
from alembic.script import ScriptDirectory

from db.session import alembic_config, make_engine, make_sessionmaker, upgrade_database

# Every store test runs on SQLite and on PostgreSQL (a database of its own on the session's server).
# The newest revision: a migration test checks its database reached it, whatever later releases add.
HEAD = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
DATABASES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(params=DATABASES)
def db_url(request, tmp_path):
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_url")
    else:
        url = f"sqlite:///{tmp_path / 'mefts.db'}"
    upgrade_database(url)
    return url


@pytest.fixture
def factory(db_url):
    engine = make_engine(db_url)
    yield make_sessionmaker(engine)
    engine.dispose()
