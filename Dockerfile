# GPU batch image for m3ed. torch 2.11 wheels from PyPI are CUDA 13.0 builds that carry their own
# CUDA libraries; the base image supplies a matching CUDA 13.0 runtime for the driver.
#   docker build -t m3ed .
#   docker run --gpus all -v /data:/data m3ed --videos /data/videos --annotations /data/annotation.json \
#       --relation /data/relation_annotation_release.json --splits /data/splitInfo --out /data/features
FROM nvidia/cuda:13.0.2-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH \
    HF_HOME=/cache/huggingface TORCH_HOME=/cache/torch M3ED_CACHE=/cache/m3ed M3ED_SAMPLE_DIR=/opt/m3ed/samples

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev ffmpeg ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv $VIRTUAL_ENV

WORKDIR /opt/m3ed
# Dependencies first, so that code changes do not reinstall torch.
COPY pyproject.toml README.md ./
RUN mkdir -p m3ed && echo '__version__ = "0.1.0"' > m3ed/__init__.py && pip install . && pip uninstall -y m3ed
COPY m3ed ./m3ed
COPY samples ./samples
RUN pip install --no-deps .

# Model weights are downloaded into /cache on first use; mount a volume there to keep them.
VOLUME ["/cache"]
ENTRYPOINT ["m3ed-extract"]
CMD ["--help"]
