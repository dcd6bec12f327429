"""``cvstudy weights pull MODEL...`` and ``cvstudy weights list``: the Hugging Face cache as cvstudy uses it.

``pull`` fills the cache ahead of time (on a login node with internet, for compute nodes without it;
copy or share ``HF_HOME`` / ``HF_HUB_CACHE``); ``list`` shows what is cached, for which model alias,
with sizes. Both use huggingface_hub's own cache layout and API (``hf_hub_download``, ``scan_cache_dir``).
"""

from __future__ import annotations

import torch
from huggingface_hub import scan_cache_dir
from huggingface_hub.errors import CacheNotFound
from rich.console import Console
from rich.table import Table

from cvstudy.trainers.config import MODEL_ALIASES, ModelConfig
from cvstudy.trainers.errors import WeightsError
from cvstudy.trainers.models import (
    cache_dir,
    create,
    download,
    hf_cache_file,
    hub_repo,
    weights_origin,
)


def pull(names: list[str], console: Console | None = None) -> list:
    """Download each model's default pretrained weights into the cache (a no-op when already there)."""
    console = console or Console()
    paths = []
    for name in names:
        cfg = ModelConfig(model=name, pretrained=True)
        with torch.device("meta"):
            create(cfg, 1000)  # an unknown model name fails here, in one line
        if not hub_repo(cfg.timm_name):
            raise WeightsError(
                f"{name}: timm has no pretrained weights on the Hugging Face Hub for it; pass --weights PATH"
            )
        _, path = hf_cache_file(cfg.timm_name)
        state = "already cached"
        if path is None:
            path, state = download(cfg.timm_name, name), "downloaded"
        paths.append(path)
        console.print(
            f"{name}: {state}: {weights_origin(path)}, {path.stat().st_size / 1e6:.1f} MB at {path}", highlight=False
        )
    console.print(
        f"cache: {cache_dir()}; training reads it with no request (also with HF_HUB_OFFLINE=1 or --offline)",
        highlight=False,
    )
    return paths


def aliases_for(repo_id: str) -> list[str]:
    """cvstudy model names whose default pretrained tag is ``repo_id`` (``timm/resnet50.a1_in1k``: resnet50)."""
    if not repo_id.startswith("timm/"):
        return []
    timm_name = repo_id.removeprefix("timm/").split(".")[0]
    if hub_repo(timm_name) != repo_id:
        return [f"{timm_name} (not its default tag)"]
    return [alias for alias, target in MODEL_ALIASES.items() if target == timm_name and alias != timm_name] + [
        timm_name
    ]


def list_cached(console: Console | None = None) -> list[dict]:

    console = console or Console()
    try:
        info = scan_cache_dir()
    except CacheNotFound:
        console.print(f"the Hugging Face cache ({cache_dir()}) is empty; `cvstudy weights pull MODEL` fills it")
        return []
    rows = []
    for repo in sorted(info.repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model":
            continue
        rows.append(
            {
                "repo": repo.repo_id,
                "models": ", ".join(aliases_for(repo.repo_id)) or "-",
                "revisions": ", ".join(sorted(r.commit_hash[:8] for r in repo.revisions)),
                "files": ", ".join(sorted({f.file_name for r in repo.revisions for f in r.files})),
                "size": repo.size_on_disk,
                "size_text": repo.size_on_disk_str,
            }
        )
    table = Table(title=f"Hugging Face cache: {cache_dir()}")
    for column in ("model", "hub repo", "revision", "files", "size"):
        table.add_column(column, justify="right" if column == "size" else "left")
    for r in rows:
        table.add_row(*(str(r[k]) for k in ("models", "repo", "revisions", "files", "size_text")))
    console.print(table)
    return rows
