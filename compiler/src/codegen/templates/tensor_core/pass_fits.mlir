          %lim{{tiles}} = arith.constant {{rows}} : index
          %fits{{tiles}} = arith.cmpi ule, %rows, %lim{{tiles}} : index
          scf.if %fits{{tiles}} {
