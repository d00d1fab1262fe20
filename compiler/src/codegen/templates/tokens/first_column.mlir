        %cf{{j}} = arith.constant {{f}} : index
        %in{{j}} = arith.cmpi ult, %a{{j}}, %cf{{j}} : index
        %st{{j}} = arith.andi %lane0, %in{{j}} : i1
        scf.if %st{{j}} {
{{inputs}}
{{act}}
          %o = arith.addi %sF, %a{{j}} : index
          %rb = arith.truncf %res : f32 to bf16
          memref.store %rb, %dst[%o] : memref<?xbf16>
        }
