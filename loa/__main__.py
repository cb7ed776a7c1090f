from loa.cli import main

main(prog_name="loa")
