"""Which CUDA runtime the installed torch family links against, read from the ELF files.

torch, torchvision and torchaudio are built per CUDA variant (+cu126, +cu130...), and pip
happily mixes variants: the PyPI torchaudio is the CUDA 13 build whatever torch is. A mixed
install imports until the first extension loads, then fails (torchaudio checks its CUDA
against torch's at import). The training image's build runs `check_installed` so a mixed
image fails there, not in a paid SageMaker job.

Read with a small ELF parser (the dynamic section's DT_NEEDED entries), not readelf: slim
images and build machines need not have binutils, and pyelftools is not a dependency.
"""
from __future__ import annotations

import re
import struct
from pathlib import Path

TORCH_FAMILY = ("torch", "torchvision", "torchaudio")
# auditwheel's bundled copies are renamed libcudart.<hash>.so.N (torchvision.libs/).
CUDART = re.compile(r"libcudart(?:\.[0-9a-f]+)?\.so\.(\d+)$")
SHT_DYNAMIC = 6
DT_NULL, DT_NEEDED = 0, 1


class NotElf(ValueError):
    """The file is not an ELF shared object this parser can read."""


def needed_libraries(path: Path) -> list[str]:
    """The DT_NEEDED names of an ELF file (what `readelf -d` lists as NEEDED)."""
    with open(path, "rb") as f:
        ident = f.read(16)
        if len(ident) < 16 or ident[:4] != b"\x7fELF" or ident[4] not in (1, 2) \
                or ident[5] not in (1, 2):
            raise NotElf(f"{path} is not an ELF file")
        wide, order = ident[4] == 2, "<" if ident[5] == 1 else ">"
        header = f.read(48 if wide else 36)
        if wide:
            shoff, shentsize, shnum = (struct.unpack_from(order + "Q", header, 24)[0],
                                       *struct.unpack_from(order + "HH", header, 42))
        else:
            shoff, shentsize, shnum = (struct.unpack_from(order + "I", header, 16)[0],
                                       *struct.unpack_from(order + "HH", header, 30))
        section = order + ("IIQQQQIIQQ" if wide else "IIIIIIIIII")
        sections = []
        for i in range(shnum):
            f.seek(shoff + i * shentsize)
            _, kind, _, _, offset, size, link, *_ = struct.unpack(
                section, f.read(struct.calcsize(section)))
            sections.append((kind, offset, size, link))
        entry = order + ("qQ" if wide else "iI")
        names = []
        for kind, offset, size, link in sections:
            if kind != SHT_DYNAMIC:
                continue
            f.seek(offset)
            data = f.read(size)
            _, str_offset, str_size, _ = sections[link]
            f.seek(str_offset)
            strtab = f.read(str_size)
            for tag, value in struct.iter_unpack(entry, data[:len(data) // struct.calcsize(entry)
                                                             * struct.calcsize(entry)]):
                if tag == DT_NULL:
                    break
                if tag == DT_NEEDED:
                    names.append(strtab[value:strtab.index(b"\0", value)].decode())
        return names


def compiled_extensions(site_packages: Path, packages=TORCH_FAMILY) -> list[Path]:
    """Every shared object of the torch family (torch/lib, torchaudio/lib, torchvision.libs...)."""
    found = []
    for package in packages:
        for folder in (site_packages / package, site_packages / f"{package}.libs"):
            if folder.is_dir():
                found += sorted(p for p in folder.rglob("*.so*") if p.is_file()
                                and re.search(r"\.so(\.\d+)*$", p.name))
    return found


def cudart_majors(site_packages: Path, packages=TORCH_FAMILY) -> dict[str, int]:
    """{relative path: N} for each extension that links libcudart.so.N."""
    majors = {}
    for path in compiled_extensions(site_packages, packages):
        try:
            needed = needed_libraries(path)
        except NotElf:
            continue
        for name in needed:
            if match := CUDART.match(name):
                majors[path.relative_to(site_packages).as_posix()] = int(match.group(1))
    return majors


def cuda_mismatches(site_packages: Path, torch_cuda: str | None,
                    packages=TORCH_FAMILY) -> list[str]:
    """One line per extension whose CUDA runtime is not torch's (torch.version.cuda).

    A CPU torch (torch_cuda None) must have no CUDA extension beside it at all.
    """
    want = int(torch_cuda.split(".")[0]) if torch_cuda else None
    return [f"{path} needs libcudart.so.{major}, but torch is built for "
            + (f"CUDA {torch_cuda}" if want else "the CPU")
            for path, major in cudart_majors(site_packages, packages).items() if major != want]


def check_installed(site_packages: Path | None = None, torch_cuda: str | None = None) -> str:
    """Raise when the installed torch family mixes CUDA variants; else say what it found.

    By default the environment torch is imported from, against its torch.version.cuda.
    """
    if site_packages is None:
        import torch

        site_packages = Path(torch.__file__).resolve().parent.parent
        torch_cuda = torch.version.cuda
    problems = cuda_mismatches(site_packages, torch_cuda)
    if problems:
        raise RuntimeError("the torch family mixes CUDA builds (install torch, torchvision and "
                           "torchaudio from one index, e.g. https://download.pytorch.org/whl/"
                           "cu126): " + "; ".join(problems))
    majors = sorted(set(cudart_majors(site_packages).values()))
    return (f"torch built for {f'CUDA {torch_cuda}' if torch_cuda else 'the CPU'}; its "
            "extensions link " + (", ".join(f"libcudart.so.{m}" for m in majors)
                                  or "no CUDA runtime"))
