"""The app on the embedded demo archive (config/gateway.yml, its directory moved to a temporary
folder), one per test module."""

from pathlib import Path

import pytest
import yaml

from gateway import create_app
from gateway.config import load_settings_from_dict

ROOT = Path(__file__).resolve().parents[2]


def demo_settings(directory: Path) -> dict:
    """The default configuration as a dict, serving the demo archive from `directory`."""
    text = (ROOT / "config" / "gateway.yml").read_text().replace("var/demo", str(directory))
    return yaml.safe_load(text)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    app = create_app(load_settings_from_dict(demo_settings(tmp_path_factory.mktemp("demo"))))
    yield app.test_client()
    app.extensions["gateway"].close()
