            %{{o}}k = arith.constant {{c}} : index
            %{{o}}col = arith.addi %oc{{j}}, %{{o}}k : index
            %{{o}}ok = arith.cmpi ult, %{{o}}col, %cN : index
            scf.if %{{o}}ok {
              %{{o}}at = arith.addi %{{r}}base, %{{o}}col : index
              %{{o}}v = arith.truncf %{{p}}acc#{{a}} : f32 to bf16
              memref.store %{{o}}v, %dst[%{{o}}at] : memref<?xbf16>
            }
