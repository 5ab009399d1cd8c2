import pytest

from db.session import make_engine, make_sessionmaker, upgrade_database

# Every store test runs on SQLite and on PostgreSQL (a database of its own on the session's server).
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
