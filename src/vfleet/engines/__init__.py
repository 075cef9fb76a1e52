"""How engines are launched: vLLM command lines and the simulator's."""
