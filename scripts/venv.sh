# Sourced by ./webui.sh and ./run_tests.sh: make sure .venv exists and holds the
# pinned stack. Idempotent: pip runs only when pyproject.toml (or the extras
# asked for) changed since the last successful install.
# Usage: ensure_venv [extra]   (extra: "" or "test")
ensure_venv() {
    local extra="${1:-}"
    local root
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    local venv="$root/.venv"
    local python="${PYTHON:-python3.11}"
    if ! command -v "$python" >/dev/null 2>&1; then
        python=python3
    fi
    if [ ! -x "$venv/bin/python" ]; then
        echo "Creating virtual environment in $venv"
        "$python" -m venv "$venv" || return 1
    fi
    local spec="."
    [ -n "$extra" ] && spec=".[$extra]"
    local stamp="$venv/.installed-$(sha256sum "$root/pyproject.toml" | cut -c1-16)-${extra:-base}"
    if [ ! -f "$stamp" ]; then
        echo "Installing pinned dependencies ($spec)"
        (cd "$root" && set -o pipefail && "$venv/bin/python" -m pip install --disable-pip-version-check -q -e "$spec" 2>&1 \
            | { grep -v "is ignored: it is neither a file nor a directory" || true; }) || return 1
        if [ "$extra" = "test" ]; then
            # k-diffusion is the reference our samplers are tested against. Its
            # declared dependencies (wandb, clean-fid, ...) are for training and are
            # not needed by k_diffusion.sampling, so it is installed without them.
            (set -o pipefail && "$venv/bin/python" -m pip install --disable-pip-version-check -q --no-deps k-diffusion==0.1.1.post1 2>&1 \
                | { grep -v "is ignored: it is neither a file nor a directory" || true; }) || return 1
        fi
        touch "$stamp"
    fi
    export PATH="$venv/bin:$PATH"
    export HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
}
