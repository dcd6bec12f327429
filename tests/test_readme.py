"""The README is a landing page that stays true: its study example is the shipped file, its links
resolve, and it carries no lab notebook (no commit hashes, a bounded length)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_the_study_example_is_the_shipped_file():
    blocks = re.findall(r"```yaml\n(.*?)```", README, flags=re.S)
    assert (ROOT / "studies" / "resnet50.yaml").read_text() in blocks


def test_every_local_link_resolves():
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text()):
            if not target.startswith(("http://", "https://")):
                assert (page.parent / target).exists(), f"{page.name}: {target}"


def test_the_readme_is_a_landing_page():
    assert len(README.splitlines()) <= 250
    assert "make sweep" in README and "make test" in README
    assert not re.search(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b", README)  # no commit hashes
