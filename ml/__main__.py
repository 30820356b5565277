from ml.cli import app

app(prog_name="python -m ml")
