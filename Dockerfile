# Steppe node image: slim Python, the system packages tinygrad and libp2p need, a non-root user.
#   docker build -t steppe .
#   docker run -v steppe-home:/home/steppe/.steppe -p 4001:4001 -p 127.0.0.1:8080:8080 steppe
# The first start creates the node's identity in the home volume (steppe init); later starts reuse it.
FROM python:3.11-slim-bookworm

RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      clang libllvm19 libgmp-dev build-essential curl \
 && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 10001 steppe \
 && mkdir -p /devnet /models && chown steppe /devnet /models
WORKDIR /opt/steppe
COPY pyproject.toml README.md ./
COPY protocol ./protocol
COPY node ./node
COPY sim ./sim
COPY contracts ./contracts
RUN pip install --no-cache-dir . \
 && apt-get purge -y build-essential && apt-get autoremove -y

USER steppe
# The committed contract build is read from here (the package itself ships without it).
ENV STEPPE_HOME=/home/steppe/.steppe STEPPE_CONTRACTS_DIR=/opt/steppe/contracts
VOLUME ["/home/steppe/.steppe"]
EXPOSE 4001 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s \
  CMD curl -fsS http://127.0.0.1:8080/status || exit 1
# With payments on, allow a minute for channels to settle: docker stop -t 70.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/bin/sh", "-c", "[ -f \"$STEPPE_HOME/identity.key\" ] || steppe init --home \"$STEPPE_HOME\"; exec steppe \"$@\"", "steppe"]
CMD ["run", "--listen", "/ip4/0.0.0.0/tcp/4001", "--api", "0.0.0.0:8080"]
