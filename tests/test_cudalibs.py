"""coughlab.aws.cudalibs: which CUDA runtime each torch-family extension links, from its ELF file.

On synthetic trees (ELF files written here, so a mixed install can be built on any machine)
and on this machine's environment, compared with readelf where it exists.
"""
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
import torch

from coughlab.aws.cudalibs import (
    NotElf,
    check_installed,
    compiled_extensions,
    cuda_mismatches,
    cudart_majors,
    needed_libraries,
)

SITE_PACKAGES = Path(torch.__file__).resolve().parent.parent


def fake_elf(path: Path, needed: list[str], wide: bool = True, order: str = "<") -> Path:
    """A minimal ELF shared object: null section, .dynstr, .dynamic listing `needed`."""
    strtab = b"\0"
    offsets = []
    for name in needed:
        offsets.append(len(strtab))
        strtab += name.encode() + b"\0"
    entry = order + ("qQ" if wide else "iI")
    dynamic = b"".join(struct.pack(entry, 1, off) for off in offsets)
    dynamic += struct.pack(entry, 0, 0)  # DT_NULL ends the table
    ehsize, shentsize = (64, 64) if wide else (52, 40)
    str_at, dyn_at = ehsize, ehsize + len(strtab)
    sh_at = dyn_at + len(dynamic)
    ident = b"\x7fELF" + bytes([2 if wide else 1, 1 if order == "<" else 2, 1]) + bytes(9)
    layout = "HHIQQQIHHHHHH" if wide else "HHIIIIIHHHHHH"
    header = ident + struct.pack(order + layout, 3, 62, 1, 0, 0, sh_at, 0, ehsize, 0, 0,
                                 shentsize, 3, 0)
    section = order + ("IIQQQQIIQQ" if wide else "IIIIIIIIII")
    sections = (struct.pack(section, *[0] * 10)
                + struct.pack(section, 0, 3, 0, 0, str_at, len(strtab), 0, 0, 1, 0)
                + struct.pack(section, 0, 6, 0, 0, dyn_at, len(dynamic), 1, 0, 8,
                              struct.calcsize(entry)))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + strtab + dynamic + sections)
    return path


@pytest.mark.parametrize("wide, order", [(True, "<"), (False, "<"), (True, ">")])
def test_needed_libraries_reads_the_dynamic_section(tmp_path, wide, order):
    names = ["libcudart.so.12", "libc10.so", "libc.so.6"]
    assert needed_libraries(fake_elf(tmp_path / "x.so", names, wide, order)) == names


def test_a_non_elf_file_is_refused(tmp_path):
    (tmp_path / "script.so").write_text("#!/bin/sh\n")
    with pytest.raises(NotElf):
        needed_libraries(tmp_path / "script.so")


def mixed_install(root: Path) -> Path:
    """The image of issue 18: torch and torchvision +cu126, torchaudio from PyPI (CUDA 13)."""
    fake_elf(root / "torch" / "lib" / "libtorch_cuda.so", ["libcudart.so.12", "libc10.so"])
    fake_elf(root / "torch" / "lib" / "libc10.so", ["libc.so.6"])
    fake_elf(root / "torchvision" / "_C.so", ["libcudart.so.12"])
    fake_elf(root / "torchaudio" / "lib" / "_torchaudio.abi3.so", ["libcudart.so.13"])
    fake_elf(root / "torchaudio" / "lib" / "libtorchaudio.abi3.so", ["libcudart.so.13"])
    fake_elf(root / "numpy" / "core" / "_multiarray.so", ["libcudart.so.11"])  # not the family
    (root / "torchaudio" / "lib" / "__init__.py").write_text("")
    return root


def test_a_torchaudio_from_another_cuda_variant_is_named(tmp_path):
    site = mixed_install(tmp_path)
    assert cuda_mismatches(site, "12.6") == [
        "torchaudio/lib/_torchaudio.abi3.so needs libcudart.so.13, but torch is built for "
        "CUDA 12.6",
        "torchaudio/lib/libtorchaudio.abi3.so needs libcudart.so.13, but torch is built for "
        "CUDA 12.6"]
    with pytest.raises(RuntimeError, match=r"mixes CUDA builds .*_torchaudio.abi3.so needs "
                                           r"libcudart.so.13"):
        check_installed(site, "12.6")


def test_one_variant_passes_and_says_what_it_links(tmp_path):
    site = tmp_path
    fake_elf(site / "torch" / "lib" / "libtorch_cuda.so", ["libcudart.so.12"])
    fake_elf(site / "torchaudio" / "lib" / "libtorchaudio.abi3.so", ["libcudart.so.12"])
    # auditwheel's renamed bundled copy (torchvision.libs/libcudart.<hash>.so.N)
    fake_elf(site / "torchvision" / "image.so", ["libcudart.faf08d9a.so.12"])
    fake_elf(site / "torchvision.libs" / "libcudart.faf08d9a.so.12", ["libc.so.6"])
    assert cudart_majors(site) == {"torch/lib/libtorch_cuda.so": 12,
                                   "torchaudio/lib/libtorchaudio.abi3.so": 12,
                                   "torchvision/image.so": 12}
    assert check_installed(site, "12.6") == ("torch built for CUDA 12.6; its extensions link "
                                             "libcudart.so.12")


def test_a_cpu_torch_beside_a_cuda_extension_is_a_mismatch(tmp_path):
    fake_elf(tmp_path / "torch" / "lib" / "libtorch_cpu.so", ["libc.so.6"])
    fake_elf(tmp_path / "torchaudio" / "lib" / "_torchaudio.abi3.so", ["libcudart.so.13"])
    assert cuda_mismatches(tmp_path, None) == [
        "torchaudio/lib/_torchaudio.abi3.so needs libcudart.so.13, but torch is built for the CPU"]


def test_this_environment_links_one_cuda_runtime(capsys):
    """The installed torch family (PyPI's builds here) agrees with torch.version.cuda."""
    found = cudart_majors(SITE_PACKAGES)
    with capsys.disabled():
        print(f"\n{torch.__version__}: {check_installed()}; {len(found)} extensions link "
              "libcudart")
    if torch.version.cuda:  # a CUDA build: torchaudio's extensions must be among those found
        assert any(path.startswith("torchaudio/") for path in found)
    assert cuda_mismatches(SITE_PACKAGES, torch.version.cuda) == []


@pytest.mark.skipif(shutil.which("readelf") is None, reason="binutils' readelf not installed")
def test_the_parser_agrees_with_readelf_on_the_installed_extensions():
    paths = compiled_extensions(SITE_PACKAGES)
    assert paths
    for path in paths:
        listing = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True,
                                 check=True).stdout
        assert needed_libraries(path) == re.findall(r"Shared library: \[(.*?)\]", listing), path
