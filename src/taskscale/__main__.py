from taskscale.cli import run

run()
