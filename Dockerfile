# Steppe node image: slim Python, the system packages tinygrad and libp2p need, a non-root user.
#   docker build -t steppe .
#   docker run -v steppe-home:/home/steppe/.steppe -p 4001:4001 steppe
FROM python:3.11-slim-bookworm

RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      clang libllvm19 libgmp-dev build-essential curl \
 && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 10001 steppe
WORKDIR /opt/steppe
COPY pyproject.toml README.md ./
COPY protocol ./protocol
COPY node ./node
COPY sim ./sim
COPY contracts ./contracts
RUN pip install --no-cache-dir . && apt-get purge -y build-essential && apt-get autoremove -y

USER steppe
ENV STEPPE_HOME=/home/steppe/.steppe DEV=CPU:LLVM
VOLUME ["/home/steppe/.steppe"]
EXPOSE 4001 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
  CMD curl -fsS http://127.0.0.1:8080/status || exit 1
ENTRYPOINT ["steppe"]
CMD ["run", "--listen", "/ip4/0.0.0.0/tcp/4001", "--api", "127.0.0.1:8080"]
