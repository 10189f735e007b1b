# Huren on its embedded defaults (folder archive + SQLite under /var/lib/huren).
# Mount your own configuration at /etc/huren/huren.yaml to change anything; it must
# configure hospitals (or access.oidc), since the container listens on every address
# and Huren refuses to serve an open archive there.
FROM python:3.11-slim-bookworm

WORKDIR /opt/huren
COPY pyproject.toml README.md ./
COPY archive ./archive
COPY gateway ./gateway
COPY dicomweb ./dicomweb
COPY huren ./huren
RUN pip install --no-cache-dir .

COPY conf/huren.yaml /etc/huren/huren.yaml
COPY conf/guideline /etc/huren/guideline
# Inside a container the DICOMweb listener must face the container's network.
RUN sed -i 's/^  host: 127.0.0.1/  host: 0.0.0.0/' /etc/huren/huren.yaml \
    && useradd --system --home /var/lib/huren --create-home huren
USER huren
WORKDIR /var/lib/huren
# The archive folder, the SQLite index, the receive folder and the outage queue (./var)
# live here; the queue is kept across a new container (host name) on this volume.
VOLUME /var/lib/huren
EXPOSE 11112 8080 2762
CMD ["huren", "serve", "--config", "/etc/huren/huren.yaml"]
