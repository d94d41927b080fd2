#!/usr/bin/env bash
# The trainer's data stack (README "Version matrix") for a CPython 3.12 x86-64 GPU node that cannot
# reach PyPI, as one archive: gpu_bundle/site.tar.xz. Unpack it there and put it first on PYTHONPATH.
# Arrow Flight/Substrait, tests and headers are left out to fit a 64 MiB transfer.
set -euo pipefail
dest=${1:-gpu_bundle}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$tmp/wheels" pyarrow==26.0.1 numpy==2.4.6 petastorm==0.13.1 dill diskcache future pyzmq
mkdir -p "$tmp/site" "$dest"
for wheel in "$tmp"/wheels/*.whl; do unzip -q -o "$wheel" -d "$tmp/site"; done
cd "$tmp/site"
rm -rf pyarrow/libarrow_flight.so* pyarrow/_flight*.so pyarrow/flight.py pyarrow/libarrow_substrait.so* \
    pyarrow/_substrait*.so pyarrow/substrait.py pyarrow/tests pyarrow/include pyarrow/src pyarrow/includes \
    numpy/*/tests numpy/tests past libfuturize libpasteurize
cd - >/dev/null
tar -C "$tmp/site" -cf - . | xz -T0 -6 > "$dest/site.tar.xz"
echo "$dest/site.tar.xz: $(du -h "$dest/site.tar.xz" | cut -f1)"
