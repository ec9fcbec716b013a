"""The public datasets ``ftbench data download`` knows: where each file lives, its size, its checksum,
the citation and the license.

Every checksum below was published by someone other than this toolkit (the source is named
in ``checksum_source``); none is invented. Where nobody publishes one, ``checksum`` is None:
the first download's sha256 is then pinned in a lock file beside the data (see
:mod:`fewshot_transfer.data.download`) and every later download is checked against it.
Sizes are in bytes where a published source states them, else None (the table shows "?").

An entry is plain data: tests and mirrors build their own :class:`DatasetEntry` (or
``dataclasses.replace`` one of these with other ``urls``) and hand it to
:func:`~fewshot_transfer.data.download.download_dataset`; nothing here is global state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fewshot_transfer.data.errors import DatasetError

#: License wording that forbids commercial use and / or derivative works: said plainly before a download.
NC = "NON-COMMERCIAL use only"
ND = "NO DERIVATIVES (do not redistribute modified copies)"


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset as published.

    Attributes:
        name: file name under ``DIR/downloads/`` (the name the user saves it as for a manual step).
        urls: addresses tried in order (mirrors); empty when only a manual download works.
        size: bytes, when published.
        checksum: ``"md5:<hex>"`` or ``"sha256:<hex>"``; None when nobody publishes one.
        checksum_source: who published ``checksum`` (shown in ``--list`` and the docs).
        unpack_to: for archives, the folder under ``DIR/raw/`` to extract into ("" = ``raw/`` itself);
            None for a plain file, which is placed in ``raw/`` as it is.
        manual: what a person must do to get the file when no URL serves it (login, form, Drive page).
    """

    name: str
    urls: tuple[str, ...] = ()
    size: int | None = None
    checksum: str | None = None
    checksum_source: str = ""
    unpack_to: str | None = ""
    manual: str = ""

    def __post_init__(self) -> None:
        if self.checksum is not None:
            algo, _, digest = self.checksum.partition(":")
            lengths = {"md5": 32, "sha256": 64}
            if algo not in lengths or len(digest) != lengths[algo] or not all(c in "0123456789abcdef" for c in digest):
                raise DatasetError(
                    f"{self.name}: checksum {self.checksum!r} is not 'md5:<32 hex>' or 'sha256:<64 hex>'"
                )
        if not self.urls and not self.manual:
            raise DatasetError(f"{self.name}: give at least one URL or the manual download instructions")


@dataclass(frozen=True)
class DatasetEntry:
    """A downloadable dataset: its files, how to import them, and the terms it comes under.

    ``importer`` is an ``ftbench data import`` kind, run on the shallowest folder under
    ``DIR/raw/`` that contains ``marker``; ``import_options`` go to ``import_dataset``
    (e.g. ``labeled_only``).
    """

    name: str
    title: str
    files: tuple[RemoteFile, ...]
    importer: str
    marker: str
    citation: str
    license: str
    homepage: str
    restrictions: tuple[str, ...] = ()
    notes: str = ""
    import_options: dict = field(default_factory=dict)

    @property
    def size(self) -> int | None:
        """Total published bytes, or None when any file's size is unknown."""
        sizes = [f.size for f in self.files]
        return None if any(s is None for s in sizes) else sum(s for s in sizes if s is not None)

    @property
    def manual(self) -> bool:
        """True when at least one file can only be fetched by hand."""
        return any(not f.urls for f in self.files)


_ZENODO = "https://zenodo.org/records/3757476/files"
_TORCH_EM = "torch-em (constantinpape/torch-em, torch_em/data/datasets/medical/covid19_seg.py)"

ENTRIES: dict[str, DatasetEntry] = {
    e.name: e
    for e in (
        DatasetEntry(
            name="covid19-ct-seg",
            title="COVID-19-CT-Seg: 20 CT volumes with lung and infection masks (Ma et al.)",
            files=(
                RemoteFile(
                    "COVID-19-CT-Seg_20cases.zip",
                    (f"{_ZENODO}/COVID-19-CT-Seg_20cases.zip?download=1",),
                    checksum="sha256:a5060480eff9315b069b086312dac4872777901fb80d268a5a83edd9f4e7b440",
                    checksum_source=_TORCH_EM,
                    unpack_to="ct_scans",
                ),
                RemoteFile(
                    "Infection_Mask.zip",
                    (f"{_ZENODO}/Infection_Mask.zip?download=1",),
                    checksum="sha256:87901c73fdd2230260e61d2dbc57bf56026efc28264006b8ea2bf411453c1694",
                    checksum_source=_TORCH_EM,
                    unpack_to="infection_mask",
                ),
                RemoteFile(
                    "Lung_Mask.zip",
                    (f"{_ZENODO}/Lung_Mask.zip?download=1",),
                    checksum="sha256:f060b0d0299939a6d95ddefdbfa281de1a779c4d230a5adbd32414711d6d8187",
                    checksum_source=_TORCH_EM,
                    unpack_to="lung_mask",
                ),
            ),
            importer="covid19-ct-seg",
            marker="ct_scans",
            citation=(
                "Ma J. et al. Toward data-efficient learning: a benchmark for COVID-19 CT lung and infection "
                "segmentation. Medical Physics 48(3):1197-1210, 2021. doi:10.1002/mp.14676; data "
                "doi:10.5281/zenodo.3757476"
            ),
            license="CC BY 4.0 (Zenodo record 3757476)",
            homepage="https://zenodo.org/records/3757476",
            notes="10 coronacases volumes in HU, 10 radiopaedia volumes windowed to 0..255 (the importer handles both).",
        ),
        DatasetEntry(
            name="medseg",
            title="MedSeg COVID-19: 100 axial slices (#1) and 9 Radiopaedia volumes (#2)",
            files=tuple(
                RemoteFile(
                    name,
                    manual=(
                        f"open http://medicalsegmentation.com/covid19/ in a browser, download {name!r} "
                        "(the page links Google Drive files, which need a click-through)"
                    ),
                    unpack_to=unpack,
                )
                for name, unpack in (
                    ("tr_im.nii.gz", None),
                    ("tr_mask.nii.gz", None),
                    ("val_im.nii.gz", None),
                    ("rp_im.zip", ""),
                    ("rp_msk.zip", ""),
                    ("rp_lung_msk.zip", ""),
                )
            ),
            importer="medseg",
            marker="tr_im.nii.gz",
            citation="MedSeg AS, COVID-19 CT segmentation dataset, http://medicalsegmentation.com/covid19/ (2020)",
            license=(
                "not stated in a machine-readable form on the page; the AMID catalogue (neuro-ml/amid) lists "
                "CC0 1.0 for the 9 volumes; the scans come from Radiopaedia and the Italian Society of Medical "
                "and Interventional Radiology: check their terms before use"
            ),
            homepage="http://medicalsegmentation.com/covid19/",
            notes=(
                "#1 has ~40 patients but no slice-to-patient map: the import marks it patients_known = false. "
                "No checksum is published: the first download's sha256 is pinned."
            ),
        ),
        DatasetEntry(
            name="covid-semiseg",
            title="COVID-SemiSeg (Inf-Net): 50 + 48 labeled 2D slices, 1600 unlabeled",
            files=(
                RemoteFile(
                    "COVID-SemiSeg.zip",
                    ("https://drive.google.com/uc?export=download&id=1bbKAqUuk7Y1q3xsDSwP07oOXN_GL3SQM",),
                    manual=(
                        "open https://drive.google.com/open?id=1bbKAqUuk7Y1q3xsDSwP07oOXN_GL3SQM (the link in the "
                        "Inf-Net README, github.com/DengPingFan/Inf-Net), confirm Google Drive's download warning "
                        "and save the zip as 'COVID-SemiSeg.zip'"
                    ),
                ),
            ),
            importer="semiseg",
            marker="TrainingSet",
            citation=(
                "Fan D.-P. et al. Inf-Net: Automatic COVID-19 lung infection segmentation from CT images. "
                "IEEE TMI 39(8):2626-2637, 2020. doi:10.1109/TMI.2020.2996645"
            ),
            license=(
                "no license stated with the data; the labeled slices derive from MedSeg, the unlabeled ones from "
                "the COVID-19 CT Collection: research use, cite the paper"
            ),
            homepage="https://github.com/DengPingFan/Inf-Net",
            notes="Google Drive answers large files with a confirmation page: then the command asks for the manual step.",
        ),
        DatasetEntry(
            name="mosmed",
            title="MosMedData COVID19_1110: 1110 CT studies, 50 of them (CT-1) with lesion masks",
            files=(
                RemoteFile(
                    "COVID19_1110.zip",
                    manual=(
                        "open https://mosmed.ai/datasets/covid19_1110 , accept the terms and download the archive "
                        "(direct link or torrent), then save it as 'COVID19_1110.zip' (a torrent that gives the "
                        "unpacked folder: zip it, or import it directly with ftbench data import mosmed FOLDER)"
                    ),
                ),
            ),
            importer="mosmed",
            marker="studies",
            citation=(
                "Morozov S.P. et al. MosMedData: chest CT scans with COVID-19 related findings dataset. "
                "medRxiv 2020.05.20.20100362, 2020"
            ),
            license="CC BY-NC-ND 3.0 (Creative Commons Attribution-NonCommercial-NoDerivs 3.0 Unported)",
            homepage="https://mosmed.ai/datasets/covid19_1110",
            restrictions=(NC, ND),
            notes="Imported labeled-only (the 50 CT-1 studies with masks); import the rest with ftbench data import mosmed.",
            import_options={"labeled_only": True},
        ),
        DatasetEntry(
            name="msd-lung",
            title="Medical Segmentation Decathlon Task06: lung tumours, 63 labeled CT volumes",
            files=(
                RemoteFile(
                    "Task06_Lung.tar",
                    (
                        "https://msd-for-monai.s3-us-west-2.amazonaws.com/Task06_Lung.tar",
                        "https://drive.google.com/uc?export=download&id=1I1LR7XjyEZ-VBQ-Xruh31V7xExMjlVvi",
                    ),
                    size=9163696640,
                    checksum="md5:8afd997733c7fc0432f71255ba4e52dc",
                    checksum_source="MONAI (monai/apps/datasets.py, DecathlonDataset.md5)",
                    manual=(
                        "open http://medicaldecathlon.com/ , follow the Google Drive link for Task06_Lung and save "
                        "it as 'Task06_Lung.tar'"
                    ),
                ),
            ),
            importer="msd",
            marker="imagesTr",
            citation=(
                "Antonelli M. et al. The Medical Segmentation Decathlon. Nature Communications 13:4128, 2022. "
                "doi:10.1038/s41467-022-30695-9"
            ),
            license="CC BY-SA 4.0 (medicaldecathlon.com)",
            homepage="http://medicaldecathlon.com/",
            notes="Non-COVID lung lesions: the source Ma et al. found transfers best (25.2 Dice source-only, 3D).",
        ),
    )
}


def get_entry(name: str) -> DatasetEntry:
    """The registry entry ``name``, with a clear error listing the known names."""
    if name not in ENTRIES:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(ENTRIES)} (ftbench data download --list)")
    return ENTRIES[name]


def format_size(size: int | None) -> str:
    """Bytes as a short human string ("8.5 GiB"), "?" when unknown."""
    if size is None:
        return "?"
    value, unit = float(size), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"
