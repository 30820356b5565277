# MediScale image for KubeRay and the Ray cluster launcher: Ray's own image plus this project.
# Its tag is the Ray version (tests/test_deploy_manifests.py checks that RAY_VERSION below, the
# manifests' rayVersion and the installed Ray agree).
#
# CPU image (head, CPU workers): torch from PyTorch's CPU wheel index.
#   docker build -t registry.example.com/mediscale:2.60.0 .
# GPU image (GPU workers): Ray's CUDA base, and torch's default CUDA wheels from PyPI.
#   docker build -t registry.example.com/mediscale:2.60.0-gpu \
#     --build-arg RAY_VARIANT=-gpu --build-arg TORCH_INDEX_URL= .
ARG RAY_VERSION=2.60.0
ARG PYTHON_TAG=py311
# "" = CPU base image, "-gpu" = Ray's CUDA base image.
ARG RAY_VARIANT=
FROM rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}${RAY_VARIANT}

ARG RAY_VERSION
# An extra index for torch's wheels; empty = PyPI only (its Linux torch wheels are CUDA builds).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

# Ray's image runs as the non-root user `ray` (uid 1000, group 100 `users`) with its Python in
# /home/ray/anaconda3, so pip needs no root. Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 1000:100
WORKDIR /home/ray/mediscale
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users data ./data
COPY --chown=ray:users ml ./ml
COPY --chown=ray:users tune ./tune
COPY --chown=ray:users serve ./serve
COPY --chown=ray:users monitor ./monitor

# The constraint keeps the base image's Ray: the cluster's Ray must be exactly rayVersion.
RUN echo "ray==${RAY_VERSION}" > /tmp/constraints.txt \
    && pip install --no-cache-dir -c /tmp/constraints.txt \
       ${TORCH_INDEX_URL:+--extra-index-url ${TORCH_INDEX_URL}} . \
    && rm /tmp/constraints.txt

# Smoke test from outside the source folder, so it imports the installed packages.
WORKDIR /home/ray
RUN python -c "import ray, data, ml, tune, serve, monitor; assert ray.__version__ == '${RAY_VERSION}', ray.__version__"
