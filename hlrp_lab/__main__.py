from hlrp_lab.cli.main import app

app()
