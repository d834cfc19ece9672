"""Run `snakemake --cores 1 e2` in DIR the way tests/e2e/conftest.py does: a child with captured output."""
import os, subprocess, sys
workdir, venv_bin = sys.argv[1], sys.argv[2]
env = dict(os.environ)
env["PATH"] = f"{venv_bin}{os.pathsep}{env.get('PATH', '')}"
proc = subprocess.run([f"{venv_bin}/snakemake", "--cores", "1", "e2"], cwd=workdir, env=env,
                      capture_output=True, text=True, timeout=3000)
print(proc.returncode)
