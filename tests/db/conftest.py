import pytest

from db.session import make_engine, make_sessionmaker, upgrade_database


@pytest.fixture
def db_url(tmp_path):
    url = f"sqlite:///{tmp_path / 'mefts.db'}"
    upgrade_database(url)
    return url


@pytest.fixture
def factory(db_url):
    engine = make_engine(db_url)
    yield make_sessionmaker(engine)
    engine.dispose()
