"""The documentation stands alone: its links resolve inside the repository, every config is
described, and nothing points at documents that are not shipped."""

import re
import subprocess

import pytest

from helpers import REPO

LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _markdown_files():
    files = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    files += sorted((REPO / "datasets").glob("*.md")) + sorted((REPO / "projects").glob("*/README.md"))
    return files


@pytest.mark.parametrize("page", _markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page):
    missing = [target for target in LINK.findall(page.read_text())
               if "://" not in target and not target.startswith("mailto:")
               and not (page.parent / target).exists()]
    assert not missing, f"{page.relative_to(REPO)} links to files that do not exist: {missing}"


def test_every_config_is_described():
    described = (REPO / "docs" / "configs.md").read_text()
    for path in sorted((REPO / "configs").rglob("*.yaml")):
        rel = path.relative_to(REPO).as_posix()
        assert f"`{rel}`" in described or _in_brace_family(rel, described), (
            f"docs/configs.md does not say what {rel} is for")


def _in_brace_family(rel, text):
    # Families are written with braces: `configs/single/DaTaSeg_R50_{a,b}.yaml`.
    for family in re.findall(r"`(configs/[^`]*\{[^}]*\}[^`]*)`", text):
        prefix, options, suffix = re.match(r"(.*)\{([^}]*)\}(.*)", family).groups()
        if any(rel == f"{prefix}{o.strip()}{suffix}" for o in options.split(",")):
            return True
    return False


def test_no_reference_to_unshipped_design_notes():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    offenders = []
    for name in tracked.stdout.split():
        if name.endswith((".py", ".md", ".yaml", ".sh", ".txt", "Makefile")) and name != "tests/test_docs.py":
            if "DESIGN.md" in (REPO / name).read_text(errors="ignore"):
                offenders.append(name)
    assert not offenders, f"these files refer to a DESIGN.md the repository does not ship: {offenders}"
