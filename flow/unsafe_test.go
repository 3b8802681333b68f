package flow

import "unsafe"

func uintptrOf(p *float32) uintptr { return uintptr(unsafe.Pointer(p)) }
