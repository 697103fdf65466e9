"""Environment checks as plain data: interpreter, torch and devices, packages, smoke tests, LPIPS.

:func:`run_checks` returns a JSON-serialisable dict; :func:`problems` turns it into one actionable line per
thing that stops the project from running. ``check_environment.py`` prints both; nothing here changes the
environment. Heavy imports (torch, diffusers, transformers) happen inside the checks, so a broken install
is reported rather than crashing the import of this module.
"""

from __future__ import annotations

import platform
import sys
from importlib import metadata
from pathlib import Path

MIN_PYTHON = (3, 10)
SETUP_HINT = "python setup_environment.py"
# Recommended batch size by total GPU memory: the first row whose bound (GiB) exceeds the memory wins.
GPU_BATCH_BY_MEMORY_GB = ((12, 32), (40, 64), (float("inf"), 128))

STATUS_OK, STATUS_MISSING, STATUS_TOO_OLD, STATUS_INCOMPATIBLE = "ok", "missing", "too_old", "incompatible"
STATUS_INVALID, STATUS_NOT_APPLICABLE = "invalid_requirement", "not_applicable"


def check_python() -> dict:
    """The running interpreter: version, executable, platform and whether it is new enough."""
    return {
        "version": platform.python_version(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "minimum": ".".join(map(str, MIN_PYTHON)),
        "ok": sys.version_info[:2] >= MIN_PYTHON,
    }


def check_torch() -> dict:
    """torch version, CUDA availability (with GPU name and total memory) and MPS availability."""
    try:
        import torch
    except ImportError as err:
        return {"installed": False, "error": str(err), "cuda_available": False, "mps_available": False}
    info = {
        "installed": True,
        "version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "gpu_count": 0,
        "gpu_name": None,
        "gpu_memory_gb": None,
        "mps_available": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
    }
    if info["cuda_available"]:
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu_count=torch.cuda.device_count(),
            gpu_name=props.name,
            gpu_memory_gb=round(props.total_memory / 1024**3, 1),
        )
    return info


def read_requirement_lines(requirements_path: str | Path) -> list[str]:
    """The requirement lines of a requirements file: comments, blank lines and pip options removed."""
    lines = []
    for raw in Path(requirements_path).read_text().splitlines():
        line = raw.split(" #", 1)[0].strip()
        if line and not line.startswith(("#", "-")):
            lines.append(line)
    return lines


def _installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _is_too_old(requirement, installed) -> bool:
    """True when the installed version is below a lower bound (>=, >, ==, ~=) of the requirement."""
    from packaging.version import InvalidVersion, Version

    for spec in requirement.specifier:
        if spec.operator in (">=", ">", "==", "~=", "===") and not spec.contains(installed, prereleases=True):
            try:
                if installed < Version(spec.version.rstrip(".*")):
                    return True
            except InvalidVersion:
                continue
    return False


def check_requirement(line: str) -> dict:
    """One requirement line: the installed version and whether it satisfies the specifier.

    Returns:
        ``{"requirement", "name", "specifier", "installed", "status"}`` with status one of ``ok``, ``missing``,
        ``too_old``, ``incompatible``, ``invalid_requirement``, ``not_applicable`` (environment marker false).
    """
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.version import InvalidVersion, Version

    try:
        req = Requirement(line)
    except InvalidRequirement as err:
        return {"requirement": line, "name": line, "specifier": "", "installed": None,
                "status": STATUS_INVALID, "error": " ".join(str(err).split())}
    entry = {"requirement": line, "name": req.name, "specifier": str(req.specifier), "installed": None}
    if req.marker is not None and not req.marker.evaluate():
        return {**entry, "status": STATUS_NOT_APPLICABLE}
    installed = _installed_version(req.name)
    entry["installed"] = installed
    if installed is None:
        return {**entry, "status": STATUS_MISSING}
    try:
        version = Version(installed)
    except InvalidVersion:
        return {**entry, "status": STATUS_INCOMPATIBLE}
    if req.specifier.contains(version, prereleases=True):
        return {**entry, "status": STATUS_OK}
    return {**entry, "status": STATUS_TOO_OLD if _is_too_old(req, version) else STATUS_INCOMPATIBLE}


def check_packages(requirements_path: str | Path) -> list[dict]:
    """:func:`check_requirement` for every requirement line of ``requirements_path``.

    Without the ``packaging`` package (a bare interpreter) the lines cannot be parsed: that is reported as
    ``packaging`` missing.
    """
    try:
        import packaging.requirements  # noqa: F401  (parsing needs it; installed with transformers et al.)
    except ImportError:
        return [{"requirement": "packaging", "name": "packaging", "specifier": "", "installed": None,
                 "status": STATUS_MISSING}]
    return [check_requirement(line) for line in read_requirement_lines(requirements_path)]


def _smoke_vqmodel() -> str:
    """Tiny diffusers VQModel: encode → decode a 16 px grayscale batch; returns a one-line summary."""
    import torch
    from diffusers import VQModel

    model = VQModel(
        in_channels=1, out_channels=1,
        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
        block_out_channels=(8,), layers_per_block=1, latent_channels=4, norm_num_groups=8,
        num_vq_embeddings=16, vq_embed_dim=4, sample_size=16,
    ).eval()
    images = torch.rand(2, 1, 16, 16) * 2 - 1  # (B, C, H, W) in [-1, 1]
    with torch.no_grad():
        latents = model.encode(images).latents  # (B, 4, 16, 16): one block, no downsampling
        decoded = model.decode(latents).sample
    if decoded.shape != images.shape or not torch.isfinite(decoded).all():
        raise RuntimeError(f"VQModel decoded shape {tuple(decoded.shape)}, expected {tuple(images.shape)}")
    return f"VQModel encode→decode {tuple(images.shape)} → latents {tuple(latents.shape)}"


def _smoke_gpt2() -> str:
    """Tiny transformers GPT2LMHeadModel forward with labels; returns a one-line summary."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=32, n_positions=16, n_embd=16, n_layer=1, n_head=2,
        bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )
    model = GPT2LMHeadModel(config).eval()
    ids = torch.randint(0, 32, (2, 8))  # (B, T)
    with torch.no_grad():
        out = model(input_ids=ids, labels=ids)
    if out.logits.shape != (2, 8, 32) or not torch.isfinite(out.loss):
        raise RuntimeError(f"GPT2 logits shape {tuple(out.logits.shape)}, loss {out.loss}")
    return f"GPT2LMHeadModel forward {tuple(ids.shape)} → logits {tuple(out.logits.shape)}"


SMOKE_TESTS = {"diffusers_vqmodel": _smoke_vqmodel, "transformers_gpt2": _smoke_gpt2}


def run_smoke_tests() -> dict:
    """Run each smoke test; a failure is reported with its exception type and message, never raised."""
    results = {}
    for name, test in SMOKE_TESTS.items():
        try:
            results[name] = {"ok": True, "detail": test()}
        except Exception as err:  # the point of a check: report any failure with its message
            results[name] = {"ok": False, "error": f"{type(err).__name__}: {err}"}
    return results


def check_lpips(net: str = "alex") -> dict:
    """Whether pretrained LPIPS can be built offline (see :func:`vqvae_transformer.perceptual.lpips_status`)."""
    try:
        from .perceptual import lpips_status

        available, reason = lpips_status(net)
    except ImportError as err:
        available, reason = False, f"cannot check LPIPS: {err}"
    return {"net": net, "available": available, "reason": reason}


def recommend(torch_info: dict) -> dict:
    """Preset and batch size for this machine: ``gpu`` with a memory-based batch when CUDA works, else ``cpu``.

    On a CPU the batch size is None: keep the preset's per-stage sizes (stage 1: 8, prior: 16), which were tuned
    for the time budget; one ``--batch_size`` for both stages would override them.
    """
    if not torch_info.get("cuda_available"):
        reason = "MPS available but the cpu preset is used" if torch_info.get("mps_available") else "no CUDA GPU"
        return {"preset": "cpu", "batch_size": None, "reason": reason}
    memory = torch_info.get("gpu_memory_gb") or 0.0
    batch = next(size for bound, size in GPU_BATCH_BY_MEMORY_GB if memory < bound)
    return {"preset": "gpu", "batch_size": batch, "reason": f"CUDA GPU {torch_info.get('gpu_name')} with {memory} GiB"}


def run_checks(requirements_path: str | Path) -> dict:
    """Run every check; changes nothing.

    Args:
        requirements_path: the requirements file whose lines are checked against the installed packages.

    Returns:
        A JSON-serialisable dict with keys ``python``, ``torch``, ``packages``, ``smoke_tests``, ``lpips``,
        ``recommendation`` and ``requirements_path``.
    """
    torch_info = check_torch()
    return {
        "python": check_python(),
        "torch": torch_info,
        "requirements_path": str(requirements_path),
        "packages": check_packages(requirements_path),
        "smoke_tests": run_smoke_tests(),
        "lpips": check_lpips(),
        "recommendation": recommend(torch_info),
    }


def _package_problem(pkg: dict) -> str | None:
    status, name, found = pkg["status"], pkg["name"], pkg.get("installed")
    if status == STATUS_MISSING:
        return f"package {name} is missing (requirement {pkg['requirement']}); run `{SETUP_HINT}`"
    if status == STATUS_TOO_OLD:
        return f"package {name} {found} is too old (requirement {pkg['requirement']}); run `{SETUP_HINT}`"
    if status == STATUS_INCOMPATIBLE:
        return f"package {name} {found} does not satisfy {pkg['requirement']}; run `{SETUP_HINT}`"
    if status == STATUS_INVALID:
        return f"cannot parse requirement line {pkg['requirement']!r}: {pkg.get('error')}"
    return None


def problems(report: dict) -> list[str]:
    """One actionable line per thing that stops the project from running (LPIPS missing is not one).

    Args:
        report: the dict from :func:`run_checks` (or one shaped like it).

    Returns:
        Lines naming the package, version found and requirement, or the failing smoke test and its error.
    """
    lines = []
    py = report.get("python", {})
    if py and not py.get("ok", True):
        lines.append(f"Python {py.get('version')} is older than the required {py.get('minimum')}; "
                     "use a newer interpreter")
    for pkg in report.get("packages", []):
        line = _package_problem(pkg)
        if line:
            lines.append(line)
    for name, result in report.get("smoke_tests", {}).items():
        if not result.get("ok"):
            lines.append(f"smoke test {name} failed: {result.get('error')}")
    return lines


def warnings_of(report: dict) -> list[str]:
    """Things worth knowing that do not stop training (today: pretrained LPIPS unavailable)."""
    lpips = report.get("lpips", {})
    if lpips and not lpips.get("available"):
        return [f"LPIPS will be reported as unavailable: {lpips.get('reason')}"]
    return []


_STATUS_LABELS = {
    STATUS_OK: "ok", STATUS_MISSING: "MISSING", STATUS_TOO_OLD: "TOO OLD", STATUS_INCOMPATIBLE: "INCOMPATIBLE",
    STATUS_INVALID: "INVALID LINE", STATUS_NOT_APPLICABLE: "n/a (marker)",
}


def _format_torch(info: dict) -> list[str]:
    if not info.get("installed"):
        return [f"  torch: not importable ({info.get('error')})"]
    lines = [f"  torch {info['version']} (built for CUDA {info.get('cuda_version')})"]
    if info.get("cuda_available"):
        lines.append(f"  CUDA: available, {info['gpu_count']} GPU(s); GPU 0: {info['gpu_name']}, "
                     f"{info['gpu_memory_gb']} GiB")
    else:
        lines.append("  CUDA: not available")
    lines.append(f"  MPS: {'available' if info.get('mps_available') else 'not available'}")
    return lines


def _format_packages(packages: list[dict]) -> list[str]:
    width = max([len(p["name"]) for p in packages] + [7])
    lines = [f"  {'package':<{width}}  {'required':<12}  {'installed':<14}  status"]
    for pkg in packages:
        lines.append(f"  {pkg['name']:<{width}}  {pkg['specifier'] or '-':<12}  {pkg['installed'] or '-':<14}  "
                     f"{_STATUS_LABELS.get(pkg['status'], pkg['status'])}")
    return lines


def _format_smoke(results: dict) -> list[str]:
    return [f"  {name}: {'ok — ' + r['detail'] if r['ok'] else 'FAILED — ' + r['error']}"
            for name, r in results.items()]


def format_report(report: dict) -> str:
    """The report of :func:`run_checks` as readable text, one section per check, problems and warnings last."""
    py, rec, lp = report["python"], report["recommendation"], report["lpips"]
    lines = ["Python", f"  {py['version']} at {py['executable']} ({py['platform']}); "
             f"minimum {py['minimum']}: {'ok' if py['ok'] else 'TOO OLD'}", "", "torch / device"]
    lines += _format_torch(report["torch"])
    lines += ["", f"Packages ({report['requirements_path']})"] + _format_packages(report["packages"])
    lines += ["", "Smoke tests"] + _format_smoke(report["smoke_tests"])
    lines += ["", f"LPIPS ({lp['net']})", f"  {'available' if lp['available'] else 'unavailable'}: {lp['reason']}"]
    batch = "the preset's per-stage sizes" if rec["batch_size"] is None else rec["batch_size"]
    lines += ["", "Recommendation", f"  preset {rec['preset']}, batch size {batch} ({rec['reason']})"]
    found, warned = problems(report), warnings_of(report)
    lines += ["", "Summary"]
    lines += [f"  problem: {line}" for line in found] + [f"  warning: {line}" for line in warned]
    lines.append("  the environment can run the project" if not found else
                 f"  {len(found)} problem(s): the environment cannot run the project yet")
    return "\n".join(lines)
