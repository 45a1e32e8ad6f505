"""XMP sidecars that photo tools read: `vila-tf cull`'s ratings, picks and reasons, merged into what
a sidecar already holds (docs/culling.md).

- Named `NAME.EXT.xmp` (darktable, digiKam) or `NAME.xmp` (`lightroom`: Lightroom Classic, Capture
  One, and darktable reads it too), beside the photo or under `--sidecar-dir`.
- Written with exiv2 (pyexiv2), the library digiKam and darktable themselves use: an existing
  sidecar is read, only our properties are set (`xmp:Rating`, `digiKam:PickLabel` and the
  `vilatf:` namespace), and everything else it holds is written back (keywords, edit history,
  other namespaces). A sidecar already holding these values is not written at all, so a second
  run leaves every sidecar byte for byte (and its modification time) as it was.
- Written atomically (a temporary sibling renamed over it, its permissions kept), never through
  a link; a sidecar that is not an XMP packet exiv2 parses whole (broken XML, a photo, an empty
  file), is read-only or is a link is left untouched and reported. The photos are never opened
  for writing.
"""
from __future__ import annotations

import errno
import os
import re
import stat
import xml.etree.ElementTree as ET
from typing import Optional

from vila_tf.core import atomic

STYLES = ("darktable", "lightroom", "none")
NAMESPACE, PREFIX = "http://ns.vila-tf.org/cull/1.0/", "vilatf"
RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"
PICK_LABEL = {"pick": "3", "reject": "1", "other": "0"}  # digiKam: 3 accepted, 1 rejected, 0 none
# A new sidecar: an empty packet exiv2 fills in.
EMPTY = (b'<?xpacket begin="\xef\xbb\xbf" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
         b'<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
         b' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"/>\n'
         b'</x:xmpmeta>\n<?xpacket end="w"?>\n')
_STARTS = (b"<?xpacket", b"<?xml", b"<x:xmpmeta", b"<x:xapmeta", b"<rdf:RDF")
_TOOLKIT = re.compile(rb'\s+x:xmptk="[^"]*"')


class SidecarError(Exception):
    """A sidecar left untouched; the message says why, for the user."""


def path_for(photo: str, style: str, folder: Optional[str] = None) -> str:
    """The sidecar of `photo`: `photo.xmp` (darktable) or `photo` without its extension + `.xmp`
    (lightroom); under `folder` at the photo's path (relative to the current folder when it is
    inside it, else its absolute path), so photos of different folders never share one."""
    name = photo + ".xmp" if style == "darktable" else os.path.splitext(photo)[0] + ".xmp"
    if folder is None:
        return name
    absolute = os.path.abspath(name)
    rel = os.path.relpath(absolute)
    if rel.startswith(os.pardir + os.sep) or rel == os.pardir or os.path.isabs(rel):
        rel = absolute.lstrip(os.sep)
    return os.path.join(folder, rel)


def writable(folder: str) -> Optional[str]:
    """Why a sidecar cannot be created in `folder` (it is created if missing), or None: a file is
    made and removed there, as an atomic write needs."""
    try:
        atomic.probe_folder(folder)
    except OSError as e:
        return e.strerror or str(e)
    return None


def fields(rating: int, pick: bool, score: float, group: int, reason: str) -> dict:
    """The XMP properties vila-tf sets, as exiv2 keys and the strings it reads them back as."""
    label = PICK_LABEL["pick" if pick else "reject" if rating < 0 else "other"]
    return {"Xmp.xmp.Rating": str(int(rating)), "Xmp.digiKam.PickLabel": label,
            f"Xmp.{PREFIX}.Score": f"{score:.6f}", f"Xmp.{PREFIX}.Group": str(int(group)),
            f"Xmp.{PREFIX}.Pick": "True" if pick else "False", f"Xmp.{PREFIX}.Reason": reason}


def _pyexiv2():
    from vila_tf.inputs import capture_time  # the binding, set up once (errors raise)
    lib = capture_time.pyexiv2()
    if not getattr(lib, "_vila_tf_namespace", False):
        try:
            lib.registerNs(NAMESPACE, PREFIX)
        except Exception:  # noqa: BLE001  (registered already in this process)
            pass
        lib._vila_tf_namespace = True
    return lib


def _properties_in(data: bytes) -> int:
    """How many properties an XMP packet's XML holds (ElementTree: the well-formedness check that
    exiv2 does not make loudly). ValueError when it is not well-formed XMP."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as e:
        raise ValueError(f"not well-formed XML ({e})") from None
    rdf = root if root.tag == RDF + "RDF" else root.find(RDF + "RDF")
    if rdf is None:
        raise ValueError("no rdf:RDF element: not an XMP packet")
    count = 0
    for desc in rdf.iter(RDF + "Description"):
        count += sum(1 for k in desc.attrib if not k.startswith(RDF) and not k.startswith("{http://www.w3.org/XML"))
        count += len(desc)
    return count


def read(path: str) -> Optional[bytes]:
    """The bytes of an existing sidecar (None when there is none); SidecarError when it is not one
    vila-tf may change."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise SidecarError(f"cannot be read: {e.strerror or e}") from None
    if stat.S_ISLNK(st.st_mode):
        raise SidecarError("is a link: left untouched (vila-tf writes sidecars only as plain files)")
    if not stat.S_ISREG(st.st_mode):
        raise SidecarError("is not a regular file: left untouched")
    if not os.access(path, os.W_OK):
        raise SidecarError("is read-only: left untouched")
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise SidecarError(f"cannot be read: {e.strerror or e}") from None


def merged(existing: Optional[bytes], values: dict) -> Optional[bytes]:
    """The sidecar's new bytes with `values` set, or None when it holds them already.
    SidecarError when the existing bytes are not an XMP packet exiv2 parses whole."""
    lib = _pyexiv2()
    data = EMPTY if existing is None else existing
    if existing is not None:
        if not existing.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(_STARTS):
            raise SidecarError("is not an XMP packet: left untouched")
        try:
            expected = _properties_in(existing)
        except ValueError as e:
            raise SidecarError(f"cannot be parsed: {e}: left untouched") from None
    try:
        img = lib.ImageData(data)
        try:
            held = img.read_xmp()
            if existing is not None and expected and not held:
                raise SidecarError("cannot be parsed by exiv2: left untouched")
            if all(held.get(k) == v for k, v in values.items()):
                return None
            img.modify_xmp(values)
            return _keep_toolkit(existing, img.get_bytes())
        finally:
            img.close()
    except SidecarError:
        raise
    except Exception as e:  # noqa: BLE001  (exiv2: XMP Toolkit errors)
        raise SidecarError(f"cannot be parsed: {str(e).strip() or type(e).__name__}: left untouched") from None


def _keep_toolkit(existing: Optional[bytes], new: bytes) -> bytes:
    """exiv2 signs the packet as its own (`x:xmptk`, what exiftool shows as XMPToolkit): the
    signature the sidecar had is put back (none for a new one), so nothing but our properties differs."""
    ours = _TOOLKIT.search(new[:512])
    if ours is None:
        return new
    theirs = _TOOLKIT.search(existing) if existing is not None else None
    return new[:ours.start()] + (theirs.group(0) if theirs else b"") + new[ours.end():]


def write(path: str, values: dict) -> bool:
    """Sets `values` in the sidecar at `path` (created if missing); False when it held them already.
    SidecarError (nothing changed) when it may not or cannot be written."""
    from vila_tf.core.atomic import atomic_file
    existing = read(path)
    data = merged(existing, values)
    if data is None:
        return False
    mode = os.stat(path).st_mode & 0o7777 if existing is not None else None
    try:
        with atomic_file(path, "wb") as f:
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            f.write(data)
    except OSError as e:
        full = e.errno in (errno.ENOSPC, errno.EDQUOT)
        raise SidecarError(f"cannot be written: {e.strerror or e}" + (" (the disk is full)" if full else "")) from None
    return True
