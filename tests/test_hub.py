"""Hub round trips without the internet: loading by repo id from a pre-filled offline cache, pushing to a
loopback server that answers the few endpoints ``create_repo`` + ``upload_folder`` use (docs/DESIGN.md §7)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import torch
import yaml

import generate_main
from vqvae_transformer.errors import UserInputError
from vqvae_transformer.hub import push_to_hub, write_model_card
from vqvae_transformer.models.first_stage import build_first_stage
from vqvae_transformer.models.pipeline import VQVAETransformerPipeline
from vqvae_transformer.models.prior import build_prior, build_prior_config

REPO = Path(__file__).resolve().parents[1]
REPO_ID = "acme/tiny-doppler"
SHA = "0123456789abcdef0123456789abcdef01234567"
TINY_VQ = dict(block_out_channels=(8, 16), norm_num_groups=8, latent_channels=8, num_vq_embeddings=32,
               codebook_dim=4, sample_size=16)
MAX_REQUESTS = 50


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A saved tiny pipeline with the extras of a training output folder, checkpoints included."""
    torch.manual_seed(0)
    vqvae = build_first_stage("vq", **TINY_VQ)
    vqvae.train()(torch.rand(4, 1, 16, 16) * 2 - 1)  # k-means init + one EMA update
    prior = build_prior(build_prior_config(32, 3, (8, 8), n_layer=1, n_embd=32, n_head=2, user_ids=[1, 2, 5]))
    folder = tmp_path_factory.mktemp("model")
    VQVAETransformerPipeline(vqvae=vqvae.eval(), prior=prior.eval()).save_pretrained(folder)
    (folder / "training_summary.json").write_text(json.dumps({
        "first_stage": {"codebook_usage": 0.97, "psnr": 23.4, "wall_time_s": 61.0},
        "prior": {"val_loss": 3.21, "wall_time_s": 42.5, "steps": 200},
    }))
    (folder / "sample_grid.png").write_bytes(b"\x89PNG\r\n\x1a\n fake grid")
    (folder / "checkpoints" / "prior" / "checkpoint-10").mkdir(parents=True)
    (folder / "checkpoints" / "prior" / "checkpoint-10" / "optimizer.bin").write_bytes(b"state")
    (folder / "checkpoints" / "README.md").write_text("not for the hub")
    (folder / "half_written.tmp").write_text("partial")
    return folder


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    return {**env, "OMP_NUM_THREADS": "1", "HF_HUB_DISABLE_TELEMETRY": "1", **extra}


# ----------------------------------------------------------------------------------------------- model card


def test_model_card_has_metadata_figures_usage_and_grid(model_dir):
    card = write_model_card(model_dir, repo_id=REPO_ID)
    text = card.read_text()
    _, front, body = text.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta["library_name"] == "diffusers" and meta["license"] == "mit"
    assert {"micro-doppler", "radar", "vq-vae", "gpt2"} <= set(meta["tags"])
    assert "97.0%" in body and "23.4" in body and "3.21" in body and "prior.wall_time_s" in body
    assert f'from_pretrained("{REPO_ID}")' in body and f"--model_dir {REPO_ID}" in body
    assert "![sample grid](sample_grid.png)" in body and "[1, 2, 5]" in body


def test_model_card_and_push_reject_a_non_model_folder(tmp_path):
    with pytest.raises(UserInputError, match="model_index.json"):
        write_model_card(tmp_path)
    with pytest.raises(UserInputError, match="model_index.json"):
        push_to_hub(tmp_path, REPO_ID, token="hf_dummy")


# ------------------------------------------------------------------------------------------- offline loading


def _fill_cache(hf_home: Path, model_dir: Path) -> Path:
    """Lay out ``$HF_HOME/hub/models--acme--tiny-doppler`` as snapshot_download would leave it."""
    repo_cache = hf_home / "hub" / f"models--{REPO_ID.replace('/', '--')}"
    snapshot = repo_cache / "snapshots" / SHA
    shutil.copytree(model_dir, snapshot, ignore=shutil.ignore_patterns("checkpoints", "*.tmp"))
    (repo_cache / "refs").mkdir(parents=True)
    (repo_cache / "refs" / "main").write_text(SHA)
    return snapshot


def test_offline_generic_diffusers_load_by_repo_id_from_the_cache(model_dir, tmp_path):
    """``DiffusionPipeline.from_pretrained(repo_id, trust_remote_code=True)`` (the documented one-line load) finds
    the loader shim in the cached snapshot, offline, from outside the clone, and matches our own loader."""
    _fill_cache(tmp_path / "hf_home", model_dir)
    env = _env(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1")
    env.pop("PYTHONPATH", None)
    check = (
        "import torch, diffusers\n"
        "from vqvae_transformer import VQVAETransformerPipeline\n"
        f"generic = diffusers.DiffusionPipeline.from_pretrained({REPO_ID!r}, trust_remote_code=True)\n"
        f"ours = VQVAETransformerPipeline.from_pretrained({REPO_ID!r})\n"
        "assert type(generic) is VQVAETransformerPipeline, type(generic)\n"
        "same = torch.equal(generic(generator=torch.Generator().manual_seed(5), output_type='pt').images,\n"
        "                   ours(generator=torch.Generator().manual_seed(5), output_type='pt').images)\n"
        "vqvae = diffusers.AutoModel.from_pretrained(%r, subfolder='vqvae')\n"
        "print('generic-from-cache', same, type(vqvae).__name__)\n" % REPO_ID
    )
    result = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "generic-from-cache True VQFirstStage" in result.stdout, result.stdout


def test_offline_load_by_repo_id_and_generate_from_the_cache(model_dir, tmp_path):
    snapshot = _fill_cache(tmp_path / "hf_home", model_dir)
    env = _env(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1")
    check = (
        "from vqvae_transformer.errors import UserInputError\n"
        "from vqvae_transformer.models.pipeline import VQVAETransformerPipeline\n"
        f"pipe = VQVAETransformerPipeline.from_pretrained({REPO_ID!r})\n"
        "assert pipe.user_ids == [1, 2, 5] and not pipe.prior.training, pipe.user_ids\n"
        "print('loaded-from', pipe.config._name_or_path)\n"
        "try:\n"
        "    VQVAETransformerPipeline.from_pretrained('acme/not-cached')\n"
        "except UserInputError as err:\n"
        "    print('unknown-repo:', err)\n"
    )
    result = subprocess.run([sys.executable, "-c", check], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"loaded-from {snapshot}" in result.stdout
    unknown = [line for line in result.stdout.splitlines() if line.startswith("unknown-repo:")]
    assert len(unknown) == 1 and "acme/not-cached" in unknown[0] and "HF_HUB_OFFLINE" in unknown[0]

    from_cache, from_folder = tmp_path / "from_cache", tmp_path / "from_folder"
    flags = ["--samples_per_user", "2", "--seed", "3", "--device", "cpu"]
    result = subprocess.run([sys.executable, "generate_main.py", "--model_dir", REPO_ID, "--output_dir",
                             str(from_cache)] + flags, cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert generate_main.main(["--model_dir", str(model_dir), "--output_dir", str(from_folder)] + flags) == 0
    cached_pngs = sorted(p.relative_to(from_cache) for p in from_cache.rglob("gen_*.png"))
    assert len(cached_pngs) == 6
    for rel in cached_pngs:  # the same model from the cache and from the folder gives the same bytes
        assert (from_cache / rel).read_bytes() == (from_folder / rel).read_bytes()
    assert json.loads((from_cache / "generation_info.json").read_text())["model_dir"] == REPO_ID


# ---------------------------------------------------------------------------------------------- loopback push


class FakeHub:
    """Records what a client sends to the handful of Hub endpoints a push uses."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self.commit_revisions: list[str] = []
        self.pull_requests: list[dict] = []
        self.preupload_paths: list[str] = []
        self.committed: dict[str, bytes] = {}
        self.lfs_paths: list[str] = []
        self.created: list[dict] = []
        self.lock = threading.Lock()


def _handler(hub: FakeHub, endpoint: list[str]):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep the test output quiet
            pass

        def _reply(self, status: int, payload: dict | None = None) -> None:
            body = json.dumps(payload).encode() if payload is not None else b""
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _route(self) -> None:
            path = urlsplit(self.path).path
            with hub.lock:
                hub.requests.append((self.command, path))
                over = len(hub.requests) > MAX_REQUESTS
            if over:
                self._reply(503, {"error": "too many requests in a test"})
                return
            parts = path.strip("/").split("/")
            if self.command == "POST" and path == "/api/repos/create":
                payload = json.loads(self._body())
                hub.created.append(payload)
                self._reply(200, {"url": f"{endpoint[0]}/{payload['organization']}/{payload['name']}"})
            elif self.command == "POST" and path == "/api/validate-yaml":
                self._body()
                self._reply(200, {"errors": [], "warnings": []})
            elif self.command == "POST" and parts[:2] == ["api", "models"] and "preupload" in parts:
                files = json.loads(self._body())["files"]
                hub.preupload_paths.extend(f["path"] for f in files)
                self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                                             "oid": None} for f in files]})
            elif self.command == "POST" and parts[:2] == ["api", "models"] and "commit" in parts:
                hub.commit_revisions.append(unquote(parts[-1]))
                for line in self._body().splitlines():
                    item = json.loads(line)
                    if item["key"] == "file":
                        hub.committed[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    elif item["key"] == "lfsFile":
                        hub.lfs_paths.append(item["value"]["path"])
                repo = "/".join(parts[2:4])
                self._reply(200, {"commitUrl": f"{endpoint[0]}/{repo}/commit/{SHA}", "commitOid": SHA,
                                  "pullRequestUrl": None})
            elif self.command == "POST" and parts[:2] == ["api", "models"] and parts[-1] == "discussions":
                hub.pull_requests.append(json.loads(self._body()))  # create_pr: a draft pull request first
                self._reply(200, {"num": len(hub.pull_requests)})
            elif self.command == "GET" and parts[:2] == ["api", "models"] and parts[-2] == "discussions":
                num, created = int(parts[-1]), hub.pull_requests[int(parts[-1]) - 1]
                self._reply(200, {"title": created["title"], "num": num, "author": {"name": "tester"},
                                  "createdAt": "2024-01-01T00:00:00.000Z", "status": "draft",
                                  "repo": {"name": "/".join(parts[2:4]), "type": "model"},
                                  "isPullRequest": created["pullRequest"], "events": [],
                                  "changes": {"base": "refs/heads/main"}, "filesWithConflicts": []})
            elif self.command == "HEAD" and path.endswith("/resolve/main/README.md"):
                self._reply(404)
            else:
                self._reply(404, {"error": f"not served by the test hub: {self.command} {path}"})

        do_GET = do_POST = do_HEAD = do_PUT = _route

    return Handler


@pytest.fixture
def fake_hub():
    hub, endpoint = FakeHub(), [""]
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub, endpoint))
    endpoint[0] = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield hub, endpoint[0]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_push_uploads_the_model_but_never_checkpoints(model_dir, tmp_path, fake_hub):
    hub, endpoint = fake_hub
    write_model_card(model_dir, repo_id=REPO_ID)
    script = ("import sys\nfrom vqvae_transformer.hub import push_to_hub\n"
              f"print('commit:', push_to_hub(sys.argv[1], {REPO_ID!r}, token='hf_dummy_token'))\n")
    env = _env(HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_PROGRESS_BARS="1")
    result = subprocess.run([sys.executable, "-c", script, str(model_dir)], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr + f"\nrequests: {hub.requests}"
    assert f"commit: {endpoint}/{REPO_ID}/commit/{SHA}" in result.stdout
    assert hub.created and hub.created[0]["organization"] == "acme" and hub.created[0]["name"] == "tiny-doppler"

    sent = set(hub.committed)
    expected = {"model_index.json", "README.md", "training_summary.json", "sample_grid.png", "vqvae/config.json",
                "vqvae/diffusion_pytorch_model.safetensors", "prior/config.json", "prior/model.safetensors",
                "prior/generation_config.json"}
    assert expected <= sent, sent
    assert not [p for p in sent | set(hub.preupload_paths) if p.startswith("checkpoints/") or p.endswith(".tmp")]
    assert not hub.lfs_paths
    for name in expected:
        assert hub.committed[name] == (model_dir / name).read_bytes(), name
    assert len(hub.requests) <= MAX_REQUESTS


def test_pipeline_push_to_hub_passes_diffusers_arguments_to_the_hub(tmp_path, fake_hub):
    """VQVAETransformerPipeline.push_to_hub with DiffusionPipeline.push_to_hub's arguments: create_pr opens a pull
    request (the upload is committed to its ref), subfolder is the path in the repo (no card there, as diffusers),
    variant names the weight files."""
    hub, endpoint = fake_hub
    script = (
        "import sys\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from test_pipeline import tiny_pipeline\n"
        f"info = tiny_pipeline().push_to_hub({REPO_ID!r}, token='hf_dummy_token', create_pr=True, subfolder='v2',\n"
        "                                  variant='ema', commit_message='try ema')\n"
        "print('commit:', info, 'pr:', info.pr_url)\n"
    )
    env = _env(HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_PROGRESS_BARS="1")
    result = subprocess.run([sys.executable, "-c", script, str(REPO / "tests")], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:] + f"\nrequests: {hub.requests}"
    assert f"commit: {endpoint}/{REPO_ID}/commit/{SHA} pr: {endpoint}/{REPO_ID}/discussions/1" in result.stdout
    assert [(pr["title"], pr["pullRequest"]) for pr in hub.pull_requests] == [("try ema", True)]
    assert hub.commit_revisions and set(hub.commit_revisions) == {"refs/pr/1"}  # committed to the PR, not main
    sent = set(hub.committed)
    assert sent and all(path.startswith("v2/") for path in sent), sent
    assert {"v2/model_index.json", "v2/vqvae/diffusion_pytorch_model.ema.safetensors",
            "v2/prior/model.ema.safetensors"} <= sent and "v2/README.md" not in sent
    assert len(hub.requests) <= MAX_REQUESTS
