# minos in an image built FROM scratch: nothing but the binary.
#
# The build context must hold `rootfs/minos`: a statically linked binary
# (scripts/docker-cluster.sh builds one with
# RUSTFLAGS="-C target-feature=+crt-static" for x86_64-unknown-linux-gnu),
# or a dynamically linked one with the shared libraries `ldd` lists copied
# under rootfs/ at the same paths (what the chaos test does with its debug
# binary). No base image is pulled.
FROM scratch
COPY rootfs/ /
EXPOSE 7100
ENTRYPOINT ["/minos"]
CMD ["--help"]
