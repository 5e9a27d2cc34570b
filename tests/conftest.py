import json
import socket

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one intra-op thread is fastest, and stays fast when other processes load the CPU (several
    threads spinning against each other made these tests up to 40 times slower). Opt in per module with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now, for a torchrun rendezvous."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A local Hub (tests/hub_server.py, legacy LFS uploads) that transformers' and huggingface_hub's downloads read
    from, with a fresh cache and no token but the ones the tests pass."""
    import transformers.utils.hub
    from huggingface_hub import constants
    from hub_server import LocalHub

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "stored_tokens"))
    # The client's agent telemetry would fetch its registry from huggingface.co: an empty one is cached.
    (tmp_path / "agent_harnesses.json").write_text(json.dumps({"standardEnvVars": [], "harnesses": {}}))
    monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(tmp_path / "agent_harnesses.json"))
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    with LocalHub() as server:
        monkeypatch.setattr(constants, "ENDPOINT", server.url)
        template = server.url + "/{repo_id}/resolve/{revision}/{filename}"
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
        # transformers keeps one HfApi, bound to the endpoint of its first use (another test's server, maybe).
        monkeypatch.setattr(transformers.utils.hub, "_hf_api", None)
        yield server
        assert server.unhandled == [] and server.xet_requests == []
