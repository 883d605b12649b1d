from smscredits.cli import main

main()
