#!/usr/bin/env python3
"""Write a single-layer OCI image as an OCI image-layout tar archive, without a container engine.

    scripts/oci-image.py -o out.tar --name localhost/app:1 \\
        --file target/release/app:/usr/local/bin/app:0755 \\
        --dir /tmp:1777 --symlink /bin/sh:busybox \\
        --entrypoint /usr/local/bin/app --user 65532:65532 --env PATH=/usr/bin

The archive holds `oci-layout`, `index.json`, `blobs/sha256/` (manifest, config and ONE gzip
layer) and, for Docker's classic image store, a `manifest.json` as `docker save` writes one.
The manifest's descriptor in `index.json` carries the reference in `io.containerd.image.name`
(read first by containerd's importer, `ctr images import`, and by Podman's `podman load`) and in
`org.opencontainers.image.ref.name`.

Deterministic: entries sorted, mtime 0, owner 0:0 unless stated, no user or group names, gzip
without a name and with mtime 0, JSON with sorted keys; the same inputs give the same digests.

Entries (DEST is an absolute path in the image; parent directories are added as 0755 root):
  --file SRC:DEST[:MODE[:UID[:GID]]]   a regular file with the contents of SRC (symlinks followed);
                                       MODE (octal) defaults to 0755 if SRC is executable, else 0644
  --dir DEST[:MODE[:UID[:GID]]]        a directory, MODE defaults to 0755
  --symlink DEST:TARGET                a symbolic link

Inspect an archive (any single- or multi-manifest OCI layout tar): `--inspect ARCHIVE` checks
every blob against its digest and the layers against the config's diff_ids, then prints the
references, the config and the layers' entries.

Standard library only (Python >= 3.8).
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import platform
import posixpath
import sys
import tarfile

PROG = "oci-image.py"

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"

ARCHITECTURES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


class UsageError(Exception):
    pass


def fail(message):
    print(f"{PROG}: {message}", file=sys.stderr)
    sys.exit(2)


def image_path(dest, option):
    """An absolute, normalised path in the image, returned without its leading slash."""
    if not dest.startswith("/"):
        raise UsageError(f"{option}: {dest!r} is not an absolute path")
    normal = posixpath.normpath(dest).lstrip("/")
    if not normal or normal == "." or normal.startswith(".."):
        raise UsageError(f"{option}: {dest!r} does not name a path below /")
    return normal


def parse_mode(text, option):
    try:
        mode = int(text, 8)
    except ValueError:
        raise UsageError(f"{option}: mode {text!r} is not octal") from None
    if not 0 <= mode <= 0o7777:
        raise UsageError(f"{option}: mode {text!r} out of range")
    return mode


def parse_id(text, option, what):
    if not text.isdigit():
        raise UsageError(f"{option}: {what} {text!r} is not a number")
    return int(text)


def owner_and_mode(rest, option, default_mode):
    """[MODE[:UID[:GID]]] → (mode, uid, gid); GID defaults to UID."""
    if len(rest) > 3:
        raise UsageError(f"{option}: too many ':'-separated fields")
    mode = parse_mode(rest[0], option) if rest and rest[0] else default_mode
    uid = parse_id(rest[1], option, "uid") if len(rest) > 1 else 0
    gid = parse_id(rest[2], option, "gid") if len(rest) > 2 else uid
    return mode, uid, gid


class Entry:
    def __init__(self, path, kind, mode=0o755, uid=0, gid=0, data=b"", target=""):
        self.path, self.kind, self.mode = path, kind, mode
        self.uid, self.gid, self.data, self.target = uid, gid, data, target

    def tarinfo(self):
        info = tarfile.TarInfo(self.path)
        info.mtime = 0
        info.uid, info.gid = self.uid, self.gid
        info.uname = info.gname = ""
        if self.kind == "file":
            info.type, info.mode, info.size = tarfile.REGTYPE, self.mode, len(self.data)
        elif self.kind == "dir":
            info.type, info.mode = tarfile.DIRTYPE, self.mode
        else:
            info.type, info.mode, info.linkname = tarfile.SYMTYPE, 0o777, self.target
        return info


def collect_entries(args):
    entries = {}

    def add(entry, option):
        if entry.path in entries:
            raise UsageError(f"{option}: /{entry.path} is given twice")
        entries[entry.path] = entry

    for spec in args.files:
        option = f"--file {spec}"
        parts = spec.split(":")
        if len(parts) < 2:
            raise UsageError(f"{option}: expected SRC:DEST[:MODE[:UID[:GID]]]")
        src, dest, rest = parts[0], parts[1], parts[2:]
        if not os.path.exists(src):
            raise UsageError(f"{option}: no such file: {src}")
        if not os.path.isfile(src):
            raise UsageError(f"{option}: not a regular file: {src}")
        executable = os.access(src, os.X_OK)
        mode, uid, gid = owner_and_mode(rest, option, 0o755 if executable else 0o644)
        with open(src, "rb") as f:
            data = f.read()
        add(Entry(image_path(dest, option), "file", mode, uid, gid, data=data), option)

    for spec in args.dirs:
        option = f"--dir {spec}"
        parts = spec.split(":")
        mode, uid, gid = owner_and_mode(parts[1:], option, 0o755)
        add(Entry(image_path(parts[0], option), "dir", mode, uid, gid), option)

    for spec in args.symlinks:
        option = f"--symlink {spec}"
        dest, sep, target = spec.partition(":")
        if not sep or not target:
            raise UsageError(f"{option}: expected DEST:TARGET")
        add(Entry(image_path(dest, option), "symlink", target=target), option)

    if not entries:
        raise UsageError("nothing to put in the layer: give --file, --dir or --symlink")

    # parent directories, root-owned 0755 unless given
    for path in list(entries):
        parent = posixpath.dirname(path)
        while parent:
            existing = entries.get(parent)
            if existing is None:
                entries[parent] = Entry(parent, "dir")
            elif existing.kind != "dir":
                raise UsageError(f"/{parent} is a {existing.kind} but /{path} is below it")
            parent = posixpath.dirname(parent)

    # a directory before its contents, siblings by name
    return [entries[p] for p in sorted(entries, key=lambda p: p.split("/"))]


def tar_bytes(members):
    """members: (TarInfo, bytes or None) in order → an uncompressed tar."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def gzip_bytes(data):
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, compresslevel=9, mtime=0) as gz:
        gz.write(data)
    return buffer.getvalue()


def canonical_json(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def descriptor(media_type, data):
    return {"mediaType": media_type, "digest": sha256(data), "size": len(data)}


def check_reference(name):
    """A plausible full reference: name[:tag], lowercase repository, a domain-like first part."""
    repository, _, tag = name.rpartition(":") if ":" in name.split("/")[-1] else (name, "", "")
    if not repository or "@" in name or any(c.isspace() for c in name):
        raise UsageError(f"--name {name!r}: expected a reference like localhost/name:tag")
    if repository != repository.lower():
        raise UsageError(f"--name {name!r}: the repository must be lowercase")
    if "/" not in repository:
        raise UsageError(
            f"--name {name!r}: give the full reference (e.g. localhost/{name}); "
            "a short name is expanded differently by every tool"
        )
    return tag


def build(args):
    check_reference(args.name)
    arch = args.arch or ARCHITECTURES.get(platform.machine())
    if not arch:
        raise UsageError(f"unknown machine {platform.machine()!r}: give --arch")

    entries = collect_entries(args)
    layer_tar = tar_bytes(
        (e.tarinfo(), e.data if e.kind == "file" else None) for e in entries
    )
    layer = gzip_bytes(layer_tar)

    container_config = {}
    if args.user:
        container_config["User"] = args.user
    if args.env:
        container_config["Env"] = args.env
    if args.entrypoint:
        container_config["Entrypoint"] = args.entrypoint
    if args.cmd:
        container_config["Cmd"] = args.cmd
    if args.workdir:
        container_config["WorkingDir"] = args.workdir
    if args.labels:
        container_config["Labels"] = dict(label.partition("=")[::2] for label in args.labels)

    config = canonical_json(
        {
            "architecture": arch,
            "os": "linux",
            "config": container_config,
            "rootfs": {"type": "layers", "diff_ids": [sha256(layer_tar)]},
            "history": [{"created_by": PROG}],
        }
    )
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": descriptor(MEDIA_CONFIG, config),
            "layers": [descriptor(MEDIA_LAYER, layer)],
        }
    )
    manifest_descriptor = descriptor(MEDIA_MANIFEST, manifest)
    manifest_descriptor["annotations"] = {
        "io.containerd.image.name": args.name,
        "org.opencontainers.image.ref.name": args.name,
    }
    manifest_descriptor["platform"] = {"architecture": arch, "os": "linux"}
    index = canonical_json(
        {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": [manifest_descriptor]}
    )

    def blob_path(data):
        return "blobs/sha256/" + hashlib.sha256(data).hexdigest()

    # Docker's classic store loads `manifest.json` (docker save >= 25 writes both formats).
    docker_manifest = canonical_json(
        [{"Config": blob_path(config), "RepoTags": [args.name], "Layers": [blob_path(layer)]}]
    )

    files = {
        "oci-layout": canonical_json({"imageLayoutVersion": "1.0.0"}),
        "index.json": index,
        "manifest.json": docker_manifest,
        blob_path(layer): layer,
        blob_path(config): config,
        blob_path(manifest): manifest,
    }
    members = []
    for directory in ("blobs", "blobs/sha256"):
        members.append((Entry(directory, "dir").tarinfo(), None))
    for name in sorted(files):
        members.append((Entry(name, "file", 0o644, data=files[name]).tarinfo(), files[name]))
    archive = tar_bytes(members)

    out_dir = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(out_dir, exist_ok=True)
    temporary = args.output + ".tmp"
    with open(temporary, "wb") as f:
        f.write(archive)
    os.replace(temporary, args.output)

    if args.verbose:
        for e in entries:
            suffix = f" -> {e.target}" if e.kind == "symlink" else ""
            size = f" {len(e.data)}" if e.kind == "file" else ""
            print(f"  {e.mode:04o} {e.uid}:{e.gid}{size} /{e.path}{suffix}", file=sys.stderr)
    print(
        f"{args.name} {manifest_descriptor['digest']} "
        f"layer {len(layer)} bytes ({len(layer_tar)} uncompressed), archive {len(archive)} bytes"
    )


def inspect(path):
    """Check and describe an OCI layout archive; raises UsageError on any inconsistency."""
    if not os.path.isfile(path):
        raise UsageError(f"--inspect: no such file: {path}")
    with tarfile.open(path) as archive:
        files = {
            posixpath.normpath(m.name): archive.extractfile(m).read()
            for m in archive.getmembers()
            if m.isfile()
        }

    def blob(desc):
        algorithm, _, encoded = desc["digest"].partition(":")
        data = files.get(f"blobs/{algorithm}/{encoded}")
        if data is None:
            raise UsageError(f"{path}: blob {desc['digest']} missing")
        if sha256(data) != desc["digest"] or len(data) != desc["size"]:
            raise UsageError(f"{path}: blob {desc['digest']} does not match its descriptor")
        return data

    if "oci-layout" not in files or "index.json" not in files:
        raise UsageError(f"{path}: not an OCI image layout (oci-layout, index.json)")
    index = json.loads(files["index.json"])
    for desc in index["manifests"]:
        annotations = desc.get("annotations", {})
        print(f"manifest {desc['digest']}")
        for key in ("io.containerd.image.name", "org.opencontainers.image.ref.name"):
            if key in annotations:
                print(f"  {key}: {annotations[key]}")
        manifest = json.loads(blob(desc))
        config = json.loads(blob(manifest["config"]))
        print(f"  platform: {config.get('os')}/{config.get('architecture')}")
        print(f"  config: {json.dumps(config.get('config', {}), sort_keys=True)}")
        diff_ids = config["rootfs"]["diff_ids"]
        if len(diff_ids) != len(manifest["layers"]):
            raise UsageError(f"{path}: {len(manifest['layers'])} layers, {len(diff_ids)} diff_ids")
        for layer_desc, diff_id in zip(manifest["layers"], diff_ids):
            layer = blob(layer_desc)
            uncompressed = gzip.decompress(layer) if layer[:2] == b"\x1f\x8b" else layer
            if sha256(uncompressed) != diff_id:
                raise UsageError(f"{path}: layer {layer_desc['digest']} does not match {diff_id}")
            print(f"  layer {layer_desc['digest']} {layer_desc['mediaType']}: "
                  f"{len(layer)} bytes, {len(uncompressed)} uncompressed")
            with tarfile.open(fileobj=io.BytesIO(uncompressed)) as tar:
                for m in tar.getmembers():
                    kind = "d" if m.isdir() else "l" if m.issym() else "-" if m.isfile() else "?"
                    target = f" -> {m.linkname}" if m.issym() else ""
                    size = f" {m.size}" if m.isfile() else ""
                    print(f"    {kind}{m.mode:04o} {m.uid}:{m.gid} mtime={m.mtime}{size} "
                          f"/{m.name}{target}")


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    parser.add_argument("-o", "--output", help="the archive to write")
    parser.add_argument("--name", help="full image reference, e.g. localhost/x:1")
    parser.add_argument("--inspect", metavar="ARCHIVE",
                        help="check and describe ARCHIVE instead of writing one")
    parser.add_argument("--file", dest="files", action="append", default=[],
                        metavar="SRC:DEST[:MODE[:UID[:GID]]]")
    parser.add_argument("--dir", dest="dirs", action="append", default=[],
                        metavar="DEST[:MODE[:UID[:GID]]]")
    parser.add_argument("--symlink", dest="symlinks", action="append", default=[],
                        metavar="DEST:TARGET")
    parser.add_argument("--entrypoint", action="append", default=[], metavar="ARG",
                        help="one element of the entrypoint (repeat for more)")
    parser.add_argument("--cmd", action="append", default=[], metavar="ARG",
                        help="one element of the command (repeat for more)")
    parser.add_argument("--user", help="USER[:GROUP], numeric for a rootless image")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--workdir")
    parser.add_argument("--label", dest="labels", action="append", default=[],
                        metavar="KEY=VALUE")
    parser.add_argument("--arch", help="GOARCH of the image (default: this machine's)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="list the layer's entries on stderr")
    args = parser.parse_args(argv)
    if args.inspect:
        try:
            inspect(args.inspect)
        except UsageError as error:
            fail(str(error))
        return
    if not args.output or not args.name:
        parser.error("-o/--output and --name are required")
    for env in args.env:
        if "=" not in env:
            parser.error(f"--env {env!r}: expected NAME=VALUE")
    for label in args.labels:
        if "=" not in label:
            parser.error(f"--label {label!r}: expected KEY=VALUE")
    try:
        build(args)
    except UsageError as error:
        fail(str(error))
    except OSError as error:
        fail(f"{error.filename or ''}: {error.strerror}" if error.strerror else str(error))


if __name__ == "__main__":
    main()
