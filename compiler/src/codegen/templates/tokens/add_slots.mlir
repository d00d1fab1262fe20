      %ycol = arith.addi %b0, %tid : index
      %mine = arith.cmpi ult, %tid, %cbc : index
      %inH = arith.cmpi ult, %ycol, %cH : index
      %st = arith.andi %mine, %inH : i1
      scf.if %st {
        %sk = arith.muli %tid, %ck : index
{{adds}}
        %tH = arith.muli %tok, %cH : index
        %yo = arith.addi %tH, %ycol : index
        memref.store {{sum}}, %out[%yo] : memref<?x{{y}}>
      }
