# minos in an image built FROM scratch: nothing but the binary.
#
# The build context must hold `rootfs/minos`: a statically linked binary
# (scripts/docker-cluster.sh builds one with
# RUSTFLAGS="-C target-feature=+crt-static" for x86_64-unknown-linux-gnu),
# or a dynamically linked one with the shared libraries `ldd` lists copied
# under rootfs/ at the same paths (what the chaos test does with its debug
# binary), and an empty `rootfs/data` (the data directory). No base image
# is pulled.
#
# The node runs as an unprivileged user (uid 10001); its credentials come
# from files mounted read-only (docker-compose.yml mounts them at /secrets).
FROM scratch
COPY --chown=10001:10001 rootfs/ /
USER 10001:10001
EXPOSE 7100 7190
ENTRYPOINT ["/minos"]
CMD ["--help"]
