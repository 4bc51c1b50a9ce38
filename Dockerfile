# Container image for userns-labeler (the image the Helm chart and deploy/manifests run).
#   docker build -t <registry>/userns-labeler:0.1.0 .
# Not built by the tests: this machine has no container engine. Without one, `make image` builds the
# same image as an OCI archive (scripts/image.sh).
FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# Stripped here, not in Cargo.toml: local release builds keep their line tables (backtraces), the
# image does not need them (measured: 111 MB → 18 MB).
RUN cargo build --release --locked --bin userns-labeler \
 && strip --strip-unneeded target/release/userns-labeler \
 && target/release/userns-labeler --version

# glibc and libgcc only; runs as the distroless "nonroot" user (65532), matching the chart's
# runAsUser, with a read-only root filesystem (the binary writes no files).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/userns-labeler /usr/local/bin/userns-labeler
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/userns-labeler"]
