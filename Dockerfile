# Multi-stage: build the wheel with the compiled tag scanner, then a slim non-root runtime.
FROM python:3.11-slim-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY ext ./ext
COPY pacs ./pacs
RUN pip install --no-cache-dir build \
 && python -m build --wheel --outdir /wheels . \
 && pip wheel --no-cache-dir --wheel-dir /wheels /wheels/*.whl

FROM python:3.11-slim-bookworm AS runtime
RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin pacs \
 && mkdir -p /data && chown pacs:pacs /data
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels pacs-archive \
 && rm -rf /wheels
USER pacs
VOLUME /data
# DICOM, HTTP (DICOMweb, REST, FHIR, viewer), HL7 v2 MLLP; a DICOM TLS port is opt-in
# (PACS_TLS_PORT with PACS_TLS_CERT / PACS_TLS_KEY). Turn on PACS_HTTP_AUTH for any shared network.
EXPOSE 11112 8042 2575
ENV PACS_DATA_DIR=/data PACS_HTTP_HOST=0.0.0.0 PACS_HL7_HOST=0.0.0.0
STOPSIGNAL SIGTERM
ENTRYPOINT ["pacs"]
CMD ["serve"]
