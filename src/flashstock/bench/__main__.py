from flashstock.bench.runner import main

main()
