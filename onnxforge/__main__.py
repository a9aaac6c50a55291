from onnxforge.cli import main

main()
