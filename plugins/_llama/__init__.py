"""The cffi binding to llama.cpp; the only place cffi is used."""
