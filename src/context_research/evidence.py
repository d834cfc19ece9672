"""Evidence folders (``docs/evidence/<run>/``): summaries stay in git, raw files go into one archive.

``pack`` moves the raw files of a folder (per-request records, ledgers, logs, HTML copies, large
figures: ``packed_by_rule``) into ``raw.tar.xz`` and writes ``MANIFEST.sha256``: the sha256 of
every file of the folder and where it lives (``tree`` or ``raw.tar.xz``). A ``.gitignore`` lists the
packed paths, so copies that ``unpack`` restores beside the archive are never committed. ``verify``
checks every hash, that nothing is left out of the manifest, and that the folder's README says
where each packed file it names lives (``mark`` writes that note).

    python -m context_research.evidence pack|unpack|verify DIR...
    python -m context_research.evidence mark FILE.md...

The archive is deterministic (sorted names, mtime 0, owner root, mode 0644, xz preset 9e), so
packing the same files gives the same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import lzma
import os
import re
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .errors import ContextResearchError
from .io import atomic_path, write_text

ARCHIVE = "raw.tar.xz"
MANIFEST = "MANIFEST.sha256"
IGNORE = ".gitignore"
TREE = "tree"
EVIDENCE_ROOT = Path("docs/evidence")  # from the repository root, where the commands are run

# The packing rule, in one place. Raw kinds are packed whatever their size; a figure stays in the
# tree up to FIGURE_MAX_BYTES (READMEs and reports show it); any other file up to KEPT_MAX_BYTES.
RAW_NAMES = frozenset({"requests.csv"})  # per-request records
RAW_SUFFIXES = {
    ".jsonl": "a per-request ledger or predictions file",
    ".log": "a log",
    ".out": "a log",
    ".html": "an HTML copy of a report",
}
FIGURE_SUFFIXES = frozenset({".svg"})
FIGURE_MAX_BYTES = 64 * 1024
KEPT_MAX_BYTES = 256 * 1024
# Never packed: the folder's own bookkeeping and its README.
NEVER_PACKED = frozenset({"README.md", ARCHIVE, MANIFEST, IGNORE})
SKIPPED_DIRS = frozenset({"__pycache__", ".pytest_cache"})

MANIFEST_HEADER = (
    "# sha256 of every file of this evidence folder, and where it lives: 'tree' (beside this file)\n"
    f"# or '{ARCHIVE}' (restore it with: python -m context_research.evidence unpack <this folder>).\n"
)
IGNORE_HEADER = (
    f"# Written by `python -m context_research.evidence pack`: these files live in {ARCHIVE};\n"
    "# `unpack` restores them here, and git leaves the copies out.\n"
)


class EvidenceError(ContextResearchError):
    """An evidence folder that cannot be packed, unpacked or read as it stands."""


def packed_by_rule(rel: str, size: int) -> str | None:
    """Why the file at ``rel`` (a path inside an evidence folder) of ``size`` bytes belongs in the
    archive, or None when it stays in the tree."""
    path = PurePosixPath(rel)
    if rel in NEVER_PACKED:
        return None
    if path.name in RAW_NAMES:
        return "per-request records"
    if path.suffix in RAW_SUFFIXES:
        return RAW_SUFFIXES[path.suffix]
    if path.suffix in FIGURE_SUFFIXES:
        return f"a figure over {FIGURE_MAX_BYTES // 1024} KiB" if size > FIGURE_MAX_BYTES else None
    return f"over {KEPT_MAX_BYTES // 1024} KiB" if size > KEPT_MAX_BYTES else None


@dataclass(frozen=True)
class Entry:
    sha256: str
    where: str  # TREE or ARCHIVE


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _folder(path: str | os.PathLike) -> Path:
    folder = Path(path)
    if not folder.is_dir():
        raise EvidenceError(f"{folder}: not an evidence folder (no such directory)")
    return folder


def tree_files(folder: Path) -> list[str]:
    """Every file in the folder (its sub-folders too), as sorted POSIX paths relative to it; the
    manifest and .gitignore, and Python caches, left out."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_DIRS)
        for name in filenames:
            rel = (Path(dirpath) / name).relative_to(folder).as_posix()
            if rel not in (MANIFEST, IGNORE) and not name.endswith(".pyc"):
                found.append(rel)
    return sorted(found)


def _member_name(name: str, archive: Path) -> str:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts or name != path.as_posix():
        raise EvidenceError(f"{archive}: member {name!r} is not a plain relative path")
    return name


def read_archive(folder: Path) -> dict[str, bytes]:
    """The archive's files by path ({} when the folder has no archive)."""
    archive = folder / ARCHIVE
    if not archive.exists():
        return {}
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, mode="r:xz") as tar:
            for info in tar.getmembers():
                if not info.isfile():
                    raise EvidenceError(f"{archive}: member {info.name!r} is not a regular file")
                members[_member_name(info.name, archive)] = tar.extractfile(info).read()
    except (tarfile.TarError, lzma.LZMAError, EOFError) as exc:
        raise EvidenceError(f"{archive}: not a readable tar.xz archive ({exc})") from exc
    return members


def archive_bytes(members: dict[str, bytes]) -> bytes:
    """A tar.xz of ``members`` whose bytes depend only on their names and contents."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name in sorted(members):
            data = members[name]
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(data))
    return lzma.compress(buffer.getvalue(), format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64,
                         preset=9 | lzma.PRESET_EXTREME)


def listed_files(folder: str | os.PathLike) -> list[str]:
    """Every file of the folder, in the tree or packed (as the manifest lists them), sorted."""
    folder = _folder(folder)
    listed = set(read_manifest(folder)) if (folder / MANIFEST).exists() else set()
    return sorted(listed | set(tree_files(folder)))


def packed_under(path: str | os.PathLike) -> tuple[Path, list[str]] | None:
    """For a folder inside an evidence folder: (the evidence folder, the files under ``path`` that
    are packed and not unpacked, relative to ``path``); None outside evidence folders."""
    path = Path(path).resolve()
    for folder in (path, *path.parents):
        if (folder / MANIFEST).is_file():
            break
    else:
        return None
    prefix = path.relative_to(folder).as_posix()
    prefix = "" if prefix == "." else prefix + "/"
    return folder, [rel[len(prefix):] for rel, e in sorted(read_manifest(folder).items())
                    if e.where == ARCHIVE and rel.startswith(prefix) and not (folder / rel).exists()]


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def read_manifest(folder: Path) -> dict[str, Entry]:
    path = folder / MANIFEST
    if not path.exists():
        raise EvidenceError(f"{path}: no manifest (run: python -m context_research.evidence pack {folder})")
    entries = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("  ", 2)
        if len(parts) != 3 or len(parts[0]) != 64 or parts[1] not in (TREE, ARCHIVE):
            raise EvidenceError(f"{path}:{number}: not '<sha256>  tree|{ARCHIVE}  <path>': {line!r}")
        entries[parts[2]] = Entry(parts[0], parts[1])
    return entries


def _manifest_text(entries: dict[str, Entry]) -> str:
    return MANIFEST_HEADER + "".join(f"{e.sha256}  {e.where}  {rel}\n" for rel, e in sorted(entries.items()))


def _ignore_text(packed: list[str]) -> str:
    def escaped(rel: str) -> str:
        return "/" + re.sub(r"([*?\[\\!#])", r"\\\1", rel)
    return IGNORE_HEADER + "".join(escaped(rel) + "\n" for rel in sorted(packed))


def _prune_empty_dirs(folder: Path) -> None:
    for dirpath, _dirs, _files in sorted(os.walk(folder), key=lambda t: -len(t[0])):
        path = Path(dirpath)
        if path != folder and not any(path.iterdir()):
            path.rmdir()


def _collect(folder: Path, members: dict[str, bytes]) -> list[str]:
    """Add to ``members`` the tree files the rule packs; return every tree file to take out of the
    tree (those and unpacked copies of members). A copy that differs from its member is an error."""
    moved = []
    for rel in tree_files(folder):
        path = folder / rel
        if rel in members:
            if path.read_bytes() != members[rel]:
                raise EvidenceError(f"{path}: differs from its copy in {ARCHIVE}; evidence is not rewritten "
                                    "(restore it with unpack, or move it aside)")
        elif packed_by_rule(rel, path.stat().st_size):
            members[rel] = path.read_bytes()
        else:
            continue
        moved.append(rel)
    return moved


def pack(folder: str | os.PathLike) -> list[str]:
    """Move the folder's raw files into its archive (adding to one already there), write its
    manifest and .gitignore, and mark its README's mentions of packed files. Returns the files
    taken out of the tree."""
    folder = _folder(folder)
    members = read_archive(folder)
    moved = _collect(folder, members)
    if members:
        data = archive_bytes(members)
        if not (folder / ARCHIVE).exists() or (folder / ARCHIVE).read_bytes() != data:
            _write_bytes(folder / ARCHIVE, data)
        write_text(folder / IGNORE, _ignore_text(list(members)))
    for rel in moved:
        (folder / rel).unlink()
    _prune_empty_dirs(folder)
    entries = {rel: Entry(sha256_bytes(data), ARCHIVE) for rel, data in members.items()}
    entries.update({rel: Entry(sha256_bytes((folder / rel).read_bytes()), TREE) for rel in tree_files(folder)})
    write_text(folder / MANIFEST, _manifest_text(entries))
    mark_readme(folder)
    return moved


def mark_readme(folder: str | os.PathLike) -> list[str]:
    """Mark the folder's README's mentions of packed files (its own and its sibling folders'), and
    bring the README's line of the manifest up to date. Returns the notes of ``mark``."""
    folder = _folder(folder)
    readme = folder / "README.md"
    if not readme.exists():
        return []
    notes = mark(readme, evidence_root=folder.parent)
    if notes:
        entries = read_manifest(folder)
        entries["README.md"] = Entry(sha256_bytes(readme.read_bytes()), TREE)
        write_text(folder / MANIFEST, _manifest_text(entries))
    return notes


def unpack(folder: str | os.PathLike) -> list[str]:
    """Restore the archive's files beside it, each checked against the manifest first. A file
    already there is left alone if identical and refused if not. Returns the files written."""
    folder = _folder(folder)
    manifest = read_manifest(folder)
    written = []
    for rel, data in sorted(read_archive(folder).items()):
        entry = manifest.get(rel)
        if entry is None or entry.where != ARCHIVE or entry.sha256 != sha256_bytes(data):
            raise EvidenceError(f"{folder / ARCHIVE}: {rel} does not match {MANIFEST}")
        target = folder / rel
        if target.exists():
            if target.read_bytes() != data:
                raise EvidenceError(f"{target}: exists and differs from its copy in {ARCHIVE}")
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        _write_bytes(target, data)
        written.append(rel)
    return written


def _hash_problems(folder: Path, manifest: dict[str, Entry], members: dict[str, bytes]) -> list[str]:
    problems = []
    for rel, entry in sorted(manifest.items()):
        path = folder / rel
        if entry.where == ARCHIVE:
            if rel not in members:
                problems.append(f"{rel}: listed in {ARCHIVE} but not in it")
            elif sha256_bytes(members[rel]) != entry.sha256:
                problems.append(f"{rel}: its copy in {ARCHIVE} does not match its sha256")
            if path.exists() and sha256_bytes(path.read_bytes()) != entry.sha256:
                problems.append(f"{rel}: the unpacked copy does not match its sha256")
        elif not path.exists():
            problems.append(f"{rel}: listed in the tree but missing")
        elif sha256_bytes(path.read_bytes()) != entry.sha256:
            problems.append(f"{rel}: does not match its sha256")
    problems += [f"{rel}: in {ARCHIVE} but not in {MANIFEST}" for rel in sorted(set(members) - set(manifest))]
    return problems


def verify(folder: str | os.PathLike) -> list[str]:
    """What is wrong with the folder: a hash that does not match, a file the manifest leaves out,
    a tree file the rule packs, a README mention of a packed file that does not say so. [] if none."""
    folder = _folder(folder)
    try:
        manifest = read_manifest(folder)
        members = read_archive(folder)
    except EvidenceError as exc:
        return [str(exc)]
    problems = _hash_problems(folder, manifest, members)
    for rel in tree_files(folder):
        if rel not in manifest:
            problems.append(f"{rel}: not in {MANIFEST} (run pack)")
        elif manifest[rel].where == TREE and (why := packed_by_rule(rel, (folder / rel).stat().st_size)):
            problems.append(f"{rel}: {why}, belongs in {ARCHIVE} (run pack)")
    if (folder / "README.md").exists():
        notes = mark(folder / "README.md", write=False, evidence_root=folder.parent)
        problems += [f"README.md: {note}" for note in notes]
    return [f"{folder}: {p}" for p in problems]


# --- README mentions of packed files -------------------------------------------------------------

# A markdown link or image ``[text](target)``, else a code span without spaces.
MENTION = re.compile(r"!?\[(?P<text>[^\]]*)\]\((?P<target>[^)\s]+)\)|`(?P<code>[^`\s]+)`")
NOT_A_PATH = re.compile(r"^[a-z]+:|[{}<>*]")
MARKED = " (in `"


class _Packed:
    """Which files of each evidence folder are packed (from its manifest), read once."""

    def __init__(self, evidence_root: Path):
        self.root = evidence_root.resolve()
        self._cache: dict[Path, tuple[set[str], set[str]]] = {}

    def sets(self, folder: Path) -> tuple[set[str], set[str]]:
        if folder not in self._cache:
            try:
                manifest = read_manifest(folder)
            except EvidenceError:
                manifest = {}
            self._cache[folder] = ({r for r, e in manifest.items() if e.where == ARCHIVE},
                                   {r for r, e in manifest.items() if e.where == TREE})
        return self._cache[folder]

    def locate(self, path: Path) -> tuple[Path, str] | None:
        """(evidence folder, path inside it) for a path under the evidence root."""
        try:
            parts = path.relative_to(self.root).parts
        except ValueError:
            return None
        return (self.root / parts[0], "/".join(parts[1:])) if len(parts) > 1 else None


def _code_target(token: str, md_dir: Path, packed: _Packed) -> Path | None:
    """The folder whose archive holds the file a code span names, or None. ``docs/evidence/<run>/``
    paths are read from the repository root; others, in a markdown file inside an evidence folder,
    as a path from the file's own folder or the tail of a path in that evidence folder, when every
    file they can name is packed."""
    if token.startswith("docs/evidence/"):
        found = packed.locate(packed.root.parent.parent / token)
        return found[0] if found and found[1] in packed.sets(found[0])[0] else None
    own = packed.locate(md_dir / "README.md")
    if own is None:
        return None
    folder = own[0]
    token = token.removeprefix("./")
    full = Path(os.path.relpath(os.path.normpath(md_dir / token), folder)).as_posix()
    in_archive, in_tree = packed.sets(folder)

    def named(paths: set[str]) -> bool:
        return any(p in (full, token) or p.endswith("/" + token) for p in paths)
    return folder if named(in_archive) and not named(in_tree) else None


def _mark_line(line: str, md_path: Path, packed: _Packed, notes: list[str]) -> str:
    md_dir = md_path.parent.resolve()

    def replace(m: re.Match) -> str:
        target = m.group("target")
        if target is not None:
            path = target.split("#", 1)[0]
            if NOT_A_PATH.search(path) or not path:
                return m.group(0)
            found = packed.locate((md_dir / path).resolve())
            if found is None or found[1] not in packed.sets(found[0])[0]:
                return m.group(0)
            notes.append(f"links {target}, which is in {ARCHIVE}")
            link = os.path.relpath(found[0] / ARCHIVE, md_dir)
            return f"{m.group('text')} (in [`{ARCHIVE}`]({link}))"
        token = m.group("code")
        if NOT_A_PATH.search(token) or line.startswith(MARKED, m.end()):
            return m.group(0)
        folder = _code_target(token, md_dir, packed)
        if folder is None:
            return m.group(0)
        notes.append(f"names `{token}`, which is in {ARCHIVE}, without saying so")
        where = ARCHIVE if token[:14] != "docs/evidence/" else f"docs/evidence/{folder.name}/{ARCHIVE}"
        return f"`{token}`{MARKED}{where}`)"

    return MENTION.sub(replace, line)


def mark(md_path: str | os.PathLike, write: bool = True, evidence_root: Path = EVIDENCE_ROOT) -> list[str]:
    """Make every mention of a packed evidence file in a markdown file say where it lives: a code
    span gets "(in `raw.tar.xz`)", a link is replaced by its text and a link to the archive. Fenced
    code is left alone. Returns one note per mention changed (``write=False``: would change)."""
    md_path = Path(md_path)
    packed = _Packed(evidence_root)
    notes: list[str] = []
    lines, fenced = [], False
    for line in md_path.read_text(encoding="utf-8").splitlines(keepends=True):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        lines.append(line if fenced else _mark_line(line, md_path, packed, notes))
    if write and notes:
        write_text(md_path, "".join(lines))
    return notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m context_research.evidence", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, helptext in (("pack", "move raw files into raw.tar.xz; write MANIFEST.sha256"),
                           ("unpack", "restore packed files beside the archive (git ignores them)"),
                           ("verify", "check every hash and the README's notes")):
        sub.add_parser(name, help=helptext).add_argument("dirs", nargs="+", metavar="DIR")
    sub.add_parser("mark", help="note packed files in markdown").add_argument("files", nargs="+", metavar="FILE")
    args = parser.parse_args(argv)
    try:
        if args.command == "mark":
            for path in args.files:
                print("\n".join(f"{path}: {note}" for note in mark(path)) or f"{path}: nothing to mark")
            return 0
        if args.command == "verify":
            problems = [p for d in args.dirs for p in verify(d)]
            print("\n".join(problems) or f"ok: {len(args.dirs)} folder(s)")
            return 1 if problems else 0
        for d in args.dirs:
            files = (pack if args.command == "pack" else unpack)(d)
            print(f"{d}: {args.command}ed {len(files)} file(s)")
        if args.command == "pack":  # a README may name a file of a folder packed after its own
            for d in args.dirs:
                mark_readme(d)
        return 0
    except EvidenceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
