#!/usr/bin/env bash
# Writes .env for docker-compose.yml: a random database password, three API
# tokens (admin, client, participant; their hashes go into .env, the tokens
# are printed once, here) and a callback signing key. Refuses to overwrite an
# existing .env. Needs python3 (for the randomness and the hashes) only.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -e .env ]; then
  echo ".env exists; remove it first to make new secrets" >&2
  exit 1
fi
python3 - <<'PY'
import hashlib, os, secrets
entries, printed = [], []
for role, name in (("admin", "ops"), ("client", "app"), ("participant", "services")):
    token = "tdm_" + secrets.token_hex(32)
    entries.append(f"{role} {name} sha256:{hashlib.sha256(token.encode()).hexdigest()}")
    printed.append(f"  {role:<12} {token}")
fd = os.open(".env", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
with os.fdopen(fd, "w") as f:
    f.write("# Written by scripts/compose-env.sh. Keep it out of version control.\n")
    f.write(f"POSTGRES_PASSWORD={secrets.token_hex(24)}\n")
    f.write(f"TANDEM_TOKENS={';'.join(entries)}\n")
    f.write(f"TANDEM_CALLBACK_KEY={secrets.token_hex(32)}\n")
    f.write("# Where callbacks may go (your services), e.g. http://10.0.0.0/8:* http://*.svc.cluster.local:*\n")
    f.write("TANDEM_CALLBACK_ALLOW=http://host.docker.internal:*\n")
print("wrote .env. The tokens (shown once; .env holds only their hashes):")
print("\n".join(printed))
print("The participants verify callbacks with TANDEM_CALLBACK_KEY from .env.")
PY
