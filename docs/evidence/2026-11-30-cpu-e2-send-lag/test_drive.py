import os, subprocess
def test_drive():
    workdir, venv_bin = os.environ["EXP_DIR"], os.environ["EXP_VENV"]
    env = dict(os.environ)
    env["PATH"] = f"{venv_bin}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run([f"{venv_bin}/snakemake", "--cores", "1", "e2"], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=3000)
    assert proc.returncode == 0, proc.stderr[-3000:]
