import pytest

from nas_mpq.redact import mask_credentials


@pytest.mark.parametrize("text, masked", [
    ("cannot open postgresql://me:hunter2@db/optuna", "cannot open postgresql://me:***@db/optuna"),
    ("'postgresql+psycopg2://u:p@ss@host:5432/db?sslmode=require'", "'postgresql+psycopg2://u:***@host:5432/db?sslmode=require'"),
    ("mysql://db/x?user=me&password=hunter2&ssl=1", "mysql://db/x?user=me&password=***&ssl=1"),
    ("sqlite:///runs/s/study.db and http://host:8080/path", "sqlite:///runs/s/study.db and http://host:8080/path"),
    ("mysql://me@host/db", "mysql://me@host/db"),
])
def test_passwords_in_urls_are_masked(text, masked):
    assert mask_credentials(text) == masked
