#!/usr/bin/env bash
# Issue 3's GPU figures, for a session lent a GPU through the `device` tool. Each part fits one device call
# (10 minutes at most). Before the first call, in the checkout:
#
#   mkdir -p .gpu-data && cp ../shared/data/cifar10-jpg.tar.gz .gpu-data/ && echo /.gpu-data/ >> .git/info/exclude
#
# then run(command="bash benchmarks/gpu_figures.sh PART", carry=[".gpu-data"]) for PART in turn:
#   decode   nvidia-smi, JPEG decoders (oculi's worker processes vs torchvision on CPU and nvJPEG), loader
#   oculi    oculi's defaults on CIFAR-10, cold then warm cache (the 20 s / 10 s bars)
#   sweep    candidate CUDA recipes, cold, one line each (FLAGS="..." adds one more)
#   peers    the tutorial's vgg-mini and timm's resnet18, 14 epochs each
# Results land in $OUT (the device tool brings them back). The device's image has PyTorch, torchvision,
# timm, safetensors, typer, rich and scikit-learn but no package registry: oculi runs from the checkout.
set -euo pipefail
part=${1:?usage: gpu_figures.sh decode|oculi|sweep|peers}
out=${OUT:-/tmp/oculi-gpu-out}
mkdir -p "$out"
export PYTHONPATH=$PWD
data=/tmp/oculi-bench-cifar10/cifar10
if [ ! -d "$data" ]; then
    mkdir -p /tmp/oculi-bench-cifar10 && tar -xzf .gpu-data/cifar10-jpg.tar.gz -C /tmp/oculi-bench-cifar10
fi

case $part in
decode)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
    python3 -c "import torch, torchvision; print(torch.__version__, torchvision.__version__)" | tee -a "$out/gpu.txt"
    python3 benchmarks/jpeg_decoders.py --data "$data/train" | tee "$out/decoders.txt"
    python3 benchmarks/loader_throughput.py --data "$data/train" --device cuda --epochs 3 | tee "$out/loader.txt"
    ;;
oculi)
    python3 benchmarks/small_images.py --data "$data" --only oculi --warm | tee "$out/oculi.txt"
    ;;
sweep)
    for flags in "--model fast-cnn-wide" "--model fast-cnn-wide --epochs 16" "--model fast-cnn-wide --epochs 24" \
                 "--model fast-cnn-wide --epochs 16 --batch-size 1024" "--model fast-cnn-wide --epochs 16 --lookahead" \
                 ${FLAGS:+"$FLAGS"}; do
        python3 benchmarks/small_images.py --data "$data" --only oculi --oculi-flags "$flags" | tail -1 \
            | tee -a "$out/sweep.txt"
    done
    ;;
peers)
    python3 benchmarks/small_images.py --data "$data" --only tutorial timm --peer-epochs 14 | tee "$out/peers.txt"
    ;;
*)
    echo "unknown part: $part" >&2; exit 2
    ;;
esac
