package hexarch.custom.always

violations contains {"code": "custom_always", "message": "always"}
