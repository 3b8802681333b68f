//go:build !purego

#include "textflag.h"

// func adamAVX(p, grad, m, v *float32, n int, k *adamConsts)
// Updates n elements (a multiple of 8), 8 at a time, with the same operations
// in the same order as adamGo, so the results are bitwise the same.
TEXT ·adamAVX(SB), NOSPLIT, $0-48
	MOVQ p+0(FP), DI
	MOVQ grad+8(FP), SI
	MOVQ m+16(FP), R8
	MOVQ v+24(FP), R9
	MOVQ n+32(FP), CX
	MOVQ k+40(FP), DX
	VBROADCASTSS 0(DX), Y8   // b1
	VBROADCASTSS 4(DX), Y9   // c1
	VBROADCASTSS 8(DX), Y10  // b2
	VBROADCASTSS 12(DX), Y11 // c2
	VBROADCASTSS 16(DX), Y12 // lr
	VBROADCASTSS 20(DX), Y13 // eps
	VBROADCASTSS 24(DX), Y14 // sc
	VBROADCASTSS 28(DX), Y15 // decay
	XORQ AX, AX

loop:
	CMPQ AX, CX
	JGE  done
	VMOVUPS (SI)(AX*4), Y0
	VMULPS  Y14, Y0, Y0     // gi = g*sc
	VMOVUPS (R8)(AX*4), Y1
	VMULPS  Y8, Y1, Y1      // b1*m
	VMULPS  Y9, Y0, Y2      // c1*gi
	VADDPS  Y2, Y1, Y1      // mi
	VMOVUPS Y1, (R8)(AX*4)
	VMOVUPS (R9)(AX*4), Y3
	VMULPS  Y10, Y3, Y3     // b2*v
	VMULPS  Y11, Y0, Y4     // c2*gi
	VMULPS  Y0, Y4, Y4      // c2*gi*gi
	VADDPS  Y4, Y3, Y3      // vi
	VMOVUPS Y3, (R9)(AX*4)
	VSQRTPS Y3, Y5
	VADDPS  Y13, Y5, Y5     // sqrt(vi)+eps
	VMULPS  Y12, Y1, Y6     // lr*mi
	VDIVPS  Y5, Y6, Y6      // lr*mi / (sqrt(vi)+eps)
	VMOVUPS (DI)(AX*4), Y7
	VMULPS  Y15, Y7, Y7     // decay*p
	VADDPS  Y6, Y7, Y7
	VMOVUPS Y7, (DI)(AX*4)
	ADDQ    $8, AX
	JMP     loop

done:
	VZEROUPPER
	RET

// func sumSquaresAVX(grad *float32, n int, s *[4]float64)
// Adds the squares of n elements (a multiple of 4), in float64, to s: element
// i to s[i%4], in order, as sumSquaresGo does.
TEXT ·sumSquaresAVX(SB), NOSPLIT, $0-24
	MOVQ grad+0(FP), SI
	MOVQ n+8(FP), CX
	MOVQ s+16(FP), DX
	VMOVUPD (DX), Y0
	XORQ AX, AX

sqloop:
	CMPQ AX, CX
	JGE  sqdone
	VCVTPS2PD (SI)(AX*4), Y1
	VMULPD    Y1, Y1, Y1
	VADDPD    Y1, Y0, Y0
	ADDQ      $4, AX
	JMP       sqloop

sqdone:
	VMOVUPD Y0, (DX)
	VZEROUPPER
	RET
