"""The studio's static routes without a browser: which paths are public, which files serve."""

from __future__ import annotations

from graphs import auth, studio


def test_only_the_studio_and_the_root_redirect_are_public():
    for path in ("/", "/studio", "/studio/", "/studio/js/app.js"):
        assert auth.is_public(path), path
    for path in ("/studiox", "/v1/capabilities", "/v1/assets/x", "/studio-admin/x"):
        assert not auth.is_public(path), path


def test_resolve_serves_files_of_the_folder_only():
    assert studio.resolve("") == studio.STATIC_DIR / "index.html"
    assert studio.resolve("js/app.js") == studio.STATIC_DIR / "js" / "app.js"
    for path in ("../__init__.py", "js/../../__init__.py", "/etc/passwd", "js", "nothing.js"):
        assert studio.resolve(path) is None, path


def test_every_module_the_pages_import_exists():
    """A missing file would only show as a console error in the browser."""
    import re

    for js in (studio.STATIC_DIR / "js").rglob("*.js"):
        for target in re.findall(r"(?:from|import\()\s*'(\.[^']+)'", js.read_text()):
            assert (js.parent / target).resolve().is_file(), (js, target)


def test_vendored_files_are_the_pinned_ones_with_their_licences():
    """vendor/README.md names each vendored file with its SHA-256: a changed or swapped
    file (an update without its README entry) fails here."""
    import hashlib
    import re

    vendor = studio.STATIC_DIR / "vendor"
    listed = re.findall(r"^\s+([0-9a-f]{64})\s+(\S+)$", (vendor / "README.md").read_text(), re.M)
    assert listed
    for digest, name in listed:
        assert hashlib.sha256((vendor / name).read_bytes()).hexdigest() == digest, name
    files = {p.relative_to(vendor).as_posix() for p in vendor.rglob("*") if p.is_file()}
    assert files - {"README.md"} == {name for _, name in listed}  # nothing unlisted
    for folder in {p.parent for p in vendor.rglob("*.js")}:
        assert (folder / "LICENSE").is_file(), folder
