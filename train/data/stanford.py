"""Build the extra dog photos folder from the official Stanford Dogs archive, the normal way on a machine
with a network (`python -m train stanford-dogs --out data/stanford-dogs-extra`).

Stanford Dogs (Khosla et al., FGVC workshop, CVPR 2011) holds 120 ImageNet dog synsets; 20 are exactly
Oxford-IIIT Pet breeds. Their photos become `<out>/images/<label>/<stem>.jpg` with a MANIFEST.tsv, the
layout `train.data.pets.load_extra` reads, processed as the shared copy was: RGB, the shorter side scaled down
to 320 px (LANCZOS, never up), JPEG quality 90, at most 200 per label in stem order. The terms are
ImageNet's: non-commercial research and education only. The approximate matches (Stanford's
cocker_spaniel, American_Staffordshire_terrier) are left out on purpose.
"""

from __future__ import annotations

import io
import logging
import tarfile
import urllib.request
from pathlib import Path

from PIL import Image

from inference import sha256_file

log = logging.getLogger(__name__)

ARCHIVE_URL = "http://vision.stanford.edu/aditya86/ImageNetDogs/images.tar"
SHORTER_SIDE, QUALITY, PER_LABEL = 320, 90, 200

# Stanford synset folder -> Oxford-IIIT Pet label: the 20 exact matches.
SYNSETS = {
    "n02088238-basset": "basset_hound",
    "n02088364-beagle": "beagle",
    "n02108089-boxer": "boxer",
    "n02085620-Chihuahua": "chihuahua",
    "n02100735-English_setter": "english_setter",
    "n02100236-German_short-haired_pointer": "german_shorthaired",
    "n02111500-Great_Pyrenees": "great_pyrenees",
    "n02085782-Japanese_spaniel": "japanese_chin",
    "n02112350-keeshond": "keeshond",
    "n02111129-Leonberg": "leonberger",
    "n02107312-miniature_pinscher": "miniature_pinscher",
    "n02111277-Newfoundland": "newfoundland",
    "n02112018-Pomeranian": "pomeranian",
    "n02110958-pug": "pug",
    "n02109525-Saint_Bernard": "saint_bernard",
    "n02111889-Samoyed": "samoyed",
    "n02097298-Scotch_terrier": "scottish_terrier",
    "n02093256-Staffordshire_bullterrier": "staffordshire_bull_terrier",
    "n02098105-soft-coated_wheaten_terrier": "wheaten_terrier",
    "n02094433-Yorkshire_terrier": "yorkshire_terrier",
}


class ArchiveError(RuntimeError):
    """The archive is absent, cannot be fetched, or is not the one expected."""


def fetch(archive: Path, url: str = ARCHIVE_URL) -> Path:
    """Download the archive once (about 750 MB); an existing file is used as it is."""
    if archive.is_file():
        return archive
    archive.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s to %s", url, archive)
    partial = archive.with_suffix(".part")
    try:
        urllib.request.urlretrieve(url, partial)
    except OSError as error:
        raise ArchiveError(f"Could not download {url} ({error}); put images.tar at {archive} by hand.") from None
    partial.replace(archive)
    return archive


def processed(data: bytes) -> bytes:
    """RGB, the shorter side at most SHORTER_SIDE (LANCZOS, never upscaled), JPEG quality 90."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    if min(image.size) > SHORTER_SIDE:
        scale = SHORTER_SIDE / min(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=QUALITY)
    return buffer.getvalue()


def build(archive: Path, out: Path, expected_sha256: str | None = None) -> dict[str, int]:
    """The folder from the archive; returns images written per label. The archive's sha256 is checked when
    one is expected and recorded in every manifest row either way."""
    found = sha256_file(archive)
    if expected_sha256 and found != expected_sha256.lower():
        raise ArchiveError(f"{archive.name} has sha256 {found}, expected {expected_sha256}: not the archive asked for.")
    rows, written = ["relative_path\tlabel\tsource_repo\tsource_commit\tsource_path\tsquashed"], {}
    with tarfile.open(archive) as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and synset_of(m.name) in SYNSETS), key=stem_of)
        for member in members:
            label = SYNSETS[synset_of(member.name)]
            if written.get(label, 0) >= PER_LABEL:
                continue
            relative = f"images/{label}/{stem_of(member)}.jpg"
            (out / relative).parent.mkdir(parents=True, exist_ok=True)
            (out / relative).write_bytes(processed(tar.extractfile(member).read()))
            rows.append(f"{relative}\t{label}\tStanford Dogs images.tar\tsha256:{found}\t{member.name}\tno")
            written[label] = written.get(label, 0) + 1
    (out / "MANIFEST.tsv").write_text("\n".join(rows) + "\n")
    log.info("%d images of %d labels in %s", sum(written.values()), len(written), out)
    return written


def synset_of(name: str) -> str:
    """`Images/n02085620-Chihuahua/n02085620_10074.jpg` -> `n02085620-Chihuahua`."""
    parts = Path(name).parts
    return parts[-2] if len(parts) >= 2 else ""


def stem_of(member: tarfile.TarInfo) -> str:
    return Path(member.name).stem
