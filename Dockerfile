# One image for every bookstream service; the compose file picks the subcommand.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies get their own layer: it is rebuilt only when pyproject.toml changes, not on every code or
# README edit. An empty stand-in package (and README, which pyproject names) lets pip resolve and install
# them before the sources are copied.
COPY pyproject.toml ./
RUN mkdir services && touch services/__init__.py README.md \
    && pip install . \
    && pip uninstall -y bookstream \
    && rm -rf services README.md

COPY README.md ./
COPY services ./services
RUN pip install --no-deps . \
    && useradd --system --uid 10001 --no-create-home bookstream

USER bookstream
EXPOSE 9100
ENTRYPOINT ["bookstream"]
CMD ["--help"]
